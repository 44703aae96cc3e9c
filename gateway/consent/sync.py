"""Consent from the record server: ``Consent?patient:identifier=SYSTEM|VALUE`` for every bound
patient, cached in the consent store with the time it was fetched and an expiry (docs/consent.md).

The destination's TLS, client certificate, bearer token or OAuth2 client are those the gateway
sends readings with (``build_uplink``). A patient whose search fails, or whose answer holds a
Consent edge cannot read, keeps the previous cached copy (and its expiry): a half-read answer
must not drop a deny. Patient identifiers are logged at DEBUG only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from gateway.config import Config, FhirDestination
from gateway.consent.fhir import Consent, ConsentFormatError, parse_consent
from gateway.consent.store import ConsentStore
from gateway.uplinks.fhir import FhirUplink
from mappers.resources import search_token

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(hours=24)
MAX_PAGES = 50
PAGE_SIZE = 100
FORM = "application/x-www-form-urlencoded"


class ConsentSyncError(RuntimeError):
    """The destination cannot be synced from, or one search failed (no identifier inside)."""


class ConsentUntrusted(ConsentSyncError):
    """The server answered, but with Consents edge cannot read or trust (a malformed
    patient-privacy Consent, one about another patient): asking again will not change it."""


@dataclass(slots=True)
class SyncResult:
    destination: str
    patients: int = 0  # patients whose cache was refreshed
    consents: int = 0  # Consent resources now cached for them
    failures: list[str] = field(default_factory=list)  # one line each, no identifier


def _utcnow() -> datetime:
    return datetime.now(UTC)


def source_for(destination: str) -> str:
    return f"sync:{destination}"


async def sync_consents(
    store: ConsentStore,
    config: Config,
    destination: str,
    *,
    ttl: timedelta = DEFAULT_TTL,
    clock: Callable[[], datetime] = _utcnow,
) -> SyncResult:
    """Fetch every bound patient's Consents from a fhir destination into the store's cache."""
    from gateway.daemon import build_uplink  # the daemon imports the consent store

    dest = next((d for d in config.destinations if d.name == destination), None)
    if dest is None:
        raise ConsentSyncError(f"no destination named {destination!r} in the configuration")
    if not isinstance(dest, FhirDestination):
        raise ConsentSyncError(f"destination {destination!r} is not a FHIR server")
    uplink = build_uplink(dest, config, "consent-sync")
    if not isinstance(uplink, FhirUplink):  # pragma: no cover - build_uplink's contract
        raise ConsentSyncError(f"destination {destination!r} is not a FHIR server")
    result = SyncResult(destination)
    await uplink.start()
    try:
        patients = sorted({b.patient for b in config.bindings})
        for index, patient in enumerate(patients):
            try:
                count = await sync_patient(
                    store, uplink, destination, patient, ttl=ttl, clock=clock
                )
            except ConsentSyncError as exc:
                log.warning("consent sync from %s, bound patient #%d: %s", destination, index, exc)
                result.failures.append(f"bound patient #{index}: {exc}")
                continue
            result.patients += 1
            result.consents += count
    finally:
        await uplink.close()
    return result


async def sync_patient(
    store: ConsentStore,
    uplink: FhirUplink,
    destination: str,
    patient: str,
    *,
    ttl: timedelta = DEFAULT_TTL,
    clock: Callable[[], datetime] = _utcnow,
) -> int:
    """Fetch one patient's Consents through a started ``uplink`` into the store's cache;
    returns how many are cached now. ``ConsentSyncError`` (no identifier in it) if the answer
    cannot be trusted whole: the previous cached copy then stays, with its expiry."""
    fetched_at = clock()
    try:
        resources = await _search(uplink, patient)
        consents = [_parse(r) for r in resources if _privacy_scoped(r)]
        if any(c.patient != patient for c in consents):
            # a server that ignored or misread the filter: another patient's permit must
            # never become this one's (nor this one's deny be dropped)
            raise ConsentUntrusted("the answer holds a Consent about another patient")
    except ConsentSyncError:
        raise
    except (ConsentFormatError, AttributeError, TypeError) as exc:
        raise ConsentUntrusted(str(exc)) from exc
    store.replace_synced(patient, source_for(destination), consents, fetched_at, fetched_at + ttl)
    return len(consents)


def _privacy_scoped(resource: Any) -> bool:
    """A record server keeps other Consents too (research, treatment, advance directives):
    they say nothing about what leaves the gateway, and are left out rather than failing the
    patient's whole sync (a malformed patient-privacy Consent still fails it: it could be a
    deny)."""
    if not isinstance(resource, dict):
        return True  # _parse says what is wrong with it
    codings = (
        (resource.get("scope") or {}).get("coding")
        if isinstance(resource.get("scope"), dict)
        else None
    )
    if not isinstance(codings, list):
        return True
    return any(isinstance(c, dict) and c.get("code") == "patient-privacy" for c in codings)


def _parse(resource: Any) -> Consent:
    try:
        return parse_consent(resource)
    except ConsentFormatError as exc:
        ident = resource.get("id", "?") if isinstance(resource, dict) else "?"
        raise ConsentFormatError(f"Consent/{ident} {exc.field}", exc.problem) from exc


async def _search(uplink: FhirUplink, patient: str) -> list[Any]:
    """``POST [base]/Consent/_search`` with the parameters in a form body: the identifier stays
    out of URLs, hence out of HTTP logs on both sides. A next page is asked for the same way,
    with the parameters of the server's next link."""
    url = f"{uplink.base_url}/Consent/_search"
    system, _, value = patient.rpartition("|")
    query: httpx.QueryParams | None = httpx.QueryParams(  # FHIR-escaped: "," would mean OR
        {"patient:identifier": search_token(system, value), "_count": str(PAGE_SIZE)}
    )
    found: list[Any] = []
    total: Any = None
    for _ in range(MAX_PAGES):
        if query is None:
            if isinstance(total, int) and len(found) < total:
                # no next link for the rest: a partial answer could miss a deny
                raise ConsentSyncError(
                    f"Consent search: the server gave {len(found)} of {total} and no next page"
                )
            return found
        status, answer, _retry, reason = await uplink._call(
            "POST", url, body=str(query).encode(), content_type=FORM
        )
        if status != 200 or not isinstance(answer, dict):
            raise ConsentSyncError(f"Consent search: {reason}")
        if answer.get("resourceType") != "Bundle":
            raise ConsentSyncError("Consent search: the answer is not a Bundle")
        if total is None:
            total = answer.get("total")
        for entry in answer.get("entry") or []:
            if (entry.get("search") or {}).get("mode", "match") != "match":
                continue
            resource = entry.get("resource")
            if isinstance(resource, dict) and resource.get("resourceType") == "Consent":
                found.append(resource)
        following = next(
            (
                link.get("url")
                for link in answer.get("link") or []
                if link.get("relation") == "next"
            ),
            None,
        )
        query = httpx.URL(following).params if isinstance(following, str) else None
    raise ConsentSyncError(f"Consent search: more than {MAX_PAGES} pages")
