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
* deny known from a fresh answer (or a reading naming no single patient, an unknown kind): a
  permanent refusal, the reading goes to the dead-letter topic with the reason;
* deny because nothing fresh could be fetched (the server unreachable, an answer that could not
  be trusted): transient, the message stays unacknowledged and is tried again later.
Local grants and imported Consents in the bridge's consent file (``<data_dir>/consent.sqlite``,
``edge consent ... --config bridge.toml``) decide too, as they do for a gateway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from drivers.registry import BY_KIND
from gateway.consent import ConsentStore
from gateway.consent.store import Decision
from gateway.consent.sync import ConsentSyncError

log = logging.getLogger(__name__)

_FAILED_RETRY = 30.0  # seconds before a patient whose fetch failed is fetched again


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    transient: bool = False  # a deny only because nothing fresh was known: try again later


def bundle_patient(payload: bytes) -> str | None:
    """``SYSTEM|VALUE`` of the one patient the bundle's Observations name by identifier (those
    about a device name none); None when there is none, or more than one."""
    try:
        bundle: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    found: set[str] = set()
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
            continue
        subject = resource.get("subject")
        ident = subject.get("identifier") if isinstance(subject, dict) else None
        if ident is None:
            continue  # about a device (the PHD clock and status Observations): no patient
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
        fresh = await self._refreshed(patient)
        decision = self.store.decide(patient, category, self.destination)
        return Verdict(decision, transient=not decision.permit and not fresh)

    async def _refreshed(self, patient: str) -> bool:
        """Whether this patient's Consents are fresh (fetched now if they are not)."""
        now = self._clock()
        fetched = self._fresh.get(patient)
        if fetched is not None and now - fetched < self.refresh:
            return True
        failed = self._failed.get(patient)
        if failed is not None and now - failed < min(self.refresh, _FAILED_RETRY):
            return False  # do not ask the server again for every message
        try:
            await self._fetch(patient)
        except ConsentSyncError as exc:
            self._failed[patient] = now
            log.warning("bridge consent: a patient's Consents could not be fetched: %s", exc)
            return False
        self._failed.pop(patient, None)
        self._fresh[patient] = now
        if len(self._fresh) > 10_000:  # bound the memory: the oldest are fetched again
            for key in sorted(self._fresh, key=self._fresh.__getitem__)[:1_000]:
                del self._fresh[key]
        return True
