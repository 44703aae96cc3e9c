"""The consent gate of ``edge bridge``: the gateway's decision, taken again right before each
write into the record, from the patient's Consents on that record server.

A gateway decided before it published; between that moment and the bridge's write the patient
may have withdrawn consent at the record (or the gateway may hold a local grant the record does
not know). So the bridge asks the same ``ConsentStore.decide`` (deny beats permit, default deny)
with the reading's patient (its Observations' ``subject.identifier``), its consent category (from
the kind in the topic) and the bridge's destination name, over a cache of the patient's
Consents fetched from the record server (``POST Consent/_search``, as the daemon's sync) when
older than ``consent_refresh`` seconds.

* permit: written;
* deny known from a fresh answer, or from an answer edge cannot trust (a malformed
  patient-privacy Consent: it could be a deny), or for a bundle whose patients the gate cannot
  name (anything but Observations and Devices, an Observation about neither one patient nor a
  Device of the bundle, several patients), or an unknown kind: a permanent refusal, the reading
  goes to the dead-letter topic with the reason;
* deny because nothing fresh could be fetched (the server unreachable or failing, the consent
  file busy): transient, the message stays unacknowledged and is tried again later.
Local grants and imported Consents in the bridge's consent file (``<data_dir>/consent.sqlite``,
``edge consent ... --config bridge.toml``) decide too, as they do for a gateway.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from drivers.registry import BY_KIND
from gateway.consent import ConsentStore
from gateway.consent.store import Decision
from gateway.consent.sync import ConsentSyncError, ConsentUntrusted

log = logging.getLogger(__name__)

_FAILED_RETRY = 30.0  # seconds before a patient whose fetch failed is fetched again
_MEMORY = 10_000  # patients remembered as fetched (or failed), at most


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    transient: bool = False  # a deny only because nothing fresh was known: try again later


def bundle_patient(payload: bytes) -> str | None:
    """``SYSTEM|VALUE`` of the one patient the bundle is about; None when the gate cannot tell
    (then nothing of it is written): only Observations and Devices, every Observation about
    that patient by identifier or about a Device entry of the bundle (PHD device status)."""
    try:
        bundle: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if not isinstance(entries, list):
        return None
    resources = [e.get("resource") if isinstance(e, dict) else None for e in entries]
    devices = {
        e.get("fullUrl")
        for e, r in zip(entries, resources, strict=True)
        if isinstance(r, dict) and r.get("resourceType") == "Device"
    }
    found: set[str] = set()
    for resource in resources:
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if kind == "Device":
            continue
        if kind != "Observation" or not isinstance(resource, dict):
            return None  # a resource the gate cannot place: about whom?
        subject = resource.get("subject")
        if not isinstance(subject, dict):
            return None
        if "identifier" not in subject and subject.get("reference") in devices:
            continue  # about a device of this bundle: no patient
        ident = subject.get("identifier")
        system = ident.get("system") if isinstance(ident, dict) else None
        value = ident.get("value") if isinstance(ident, dict) else None
        if not (isinstance(system, str) and isinstance(value, str) and system and value):
            return None
        found.add(f"{system}|{value}")
    return found.pop() if len(found) == 1 else None


def category_of(kind: str) -> str | None:
    """The consent category of a reading kind (a topic level), None if edge has no such kind."""
    driver = BY_KIND.get(kind)
    return None if driver is None else driver.CATEGORY


class ConsentGate:
    """Decisions for one destination, with a per-patient cache refreshed on demand."""

    def __init__(
        self,
        store: ConsentStore,
        destination: str,
        fetch: Callable[[str], Awaitable[int]],
        *,
        refresh: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.destination = destination
        self._fetch = fetch  # one patient's Consents into the store (ConsentSyncError if not)
        self.refresh = refresh
        self._clock = clock
        self._fresh: dict[str, float] = {}  # patient -> when its Consents were last fetched
        self._failed: dict[str, float] = {}  # patient -> when a fetch last failed

    async def check(self, patient: str | None, kind: str) -> Verdict:
        category = category_of(kind)
        if patient is None:
            return Verdict(Decision(False, "the bundle names no single patient"))
        if category is None:
            return Verdict(Decision(False, f"unknown reading kind {kind!r}"))
        untrusted = await self._refresh(patient)
        if untrusted:
            return Verdict(Decision(False, f"the record's Consents cannot be read: {untrusted}"))
        try:
            decision = self.store.decide(patient, category, self.destination)
        except sqlite3.Error as exc:  # the consent file busy (edge consent writing): later
            log.warning("bridge consent: the consent file cannot be read now: %s", exc)
            return Verdict(Decision(False, "consent file unavailable"), transient=True)
        fresh = patient in self._fresh
        return Verdict(decision, transient=not decision.permit and not fresh)

    async def _refresh(self, patient: str) -> str:
        """Fetch this patient's Consents unless fresh ones are at hand (or a fetch just failed).
        Returns why the answer cannot be trusted, "" otherwise (fresh, or failed: transient)."""
        now = self._clock()
        fetched = self._fresh.get(patient)
        if fetched is not None and now - fetched < self.refresh:
            return ""
        self._fresh.pop(patient, None)
        failed = self._failed.get(patient)
        if failed is not None and now - failed < min(self.refresh, _FAILED_RETRY):
            return ""  # do not ask the server again for every message
        try:
            await self._fetch(patient)
        except ConsentUntrusted as exc:
            _remember(self._fresh, patient, now)  # the server did answer: this is final
            log.warning("bridge consent: a patient's Consents cannot be trusted: %s", exc)
            return str(exc)
        except Exception as exc:  # network, server, a broken answer, the consent file busy
            _remember(self._failed, patient, now)
            log.warning(
                "bridge consent: a patient's Consents could not be fetched: %s",
                exc if isinstance(exc, ConsentSyncError) else type(exc).__name__,
            )
            return ""
        self._failed.pop(patient, None)
        _remember(self._fresh, patient, now)
        return ""


def _remember(times: dict[str, float], patient: str, now: float) -> None:
    """Note when, keeping the memory bounded (the oldest are forgotten: fetched again)."""
    times[patient] = now
    if len(times) > _MEMORY:
        for key in sorted(times, key=times.__getitem__)[: _MEMORY // 10]:
            del times[key]
