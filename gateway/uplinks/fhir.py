"""FHIR over HTTPS: envelopes go to a FHIR server as transaction Bundles, several readings each.

Every entry is a conditional create (``ifNoneExist`` on the Device and Observation identifiers),
so sending a bundle again after a lost response creates nothing twice: the server answers the
existing resource. The answer is read entry by entry: a reading is delivered when all of its
entries were created or found, rejected (quarantined with the server's OperationOutcome text) when
one of them was refused, and retried otherwise. What the whole request gets decides for all:
network errors, 408, 429 and 5xx are retried after the server's ``Retry-After`` (or the outbox's
backoff); 401 gets one token refresh and one more try; 403 is an authorisation problem (parked in
the quarantine with that reason, visible, retried by hand once fixed); another 4xx for a bundle of
several readings sends them again one by one, so one bad reading never blocks the others. TLS
verification is always on. What the server did with each resource (created, already there,
rejected, and where) goes back in ``Outcome.entries`` and is kept in the outbox.

With the ``fr-mesures`` profile set (Mon espace santé) the server takes one Observation per
transaction and has no conditional create for Observations: each envelope is sent as its feed
bundles (the Device and one Observation each), and an envelope that may have been sent before (a
crash, a lost answer) first looks each Observation up by its identifier, so a resend never
creates a second copy.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from gateway.uplinks.base import EntryOutcome, Envelope, Outcome, OutcomeStatus, UplinkError
from gateway.uplinks.oauth import OAuthClient
from mappers.errors import MappingError
from mappers.fr_mesures import feed_bundles
from mappers.resources import search_token

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
_REASON_LIMIT = 300  # characters of server diagnostics kept with a quarantined reading

TokenProvider = Callable[[bool], Awaitable[str]]
"""Returns a bearer token; called with True to force a fresh one (after a 401)."""


@dataclass(frozen=True, slots=True)
class _Slot:
    """Which entries of the combined bundle belong to which envelope."""

    envelope: Envelope
    entries: list[int]


class FhirUplink:
    """A FHIR R4 server reached over HTTPS (``POST [base]`` with a transaction Bundle)."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        token: TokenProvider | None = None,
        oauth: OAuthClient | None = None,
        timeout: float = 30.0,
        allow_plaintext: bool = False,
        profile_set: str = "phd",
        search_first: bool = False,
    ) -> None:
        if not base_url.startswith("https://") and not allow_plaintext:
            raise UplinkError(f"{name}: FHIR base URL must be https:// (TLS)")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self.oauth = oauth
        self.token = oauth.token if oauth is not None else token
        self.timeout = timeout
        self.profile_set = profile_set
        # look every fr-mesures Observation up before sending it, not only after a possible send
        # (the MQTT bridge: a gateway may have published the same reading twice)
        self.search_first = search_first
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        try:
            verify = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            if self.cert_file and self.key_file:
                verify.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise UplinkError(f"{self.name}: TLS files: {exc}") from exc
        self._client = httpx.AsyncClient(verify=verify, timeout=self.timeout)

    async def close(self) -> None:
        if self.oauth is not None:
            await self.oauth.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise UplinkError(f"{self.name}: not started")
        return self._client

    # -- sending ---------------------------------------------------------------------------
    async def send(self, batch: Sequence[Envelope]) -> list[Outcome]:
        if not batch:
            return []
        if self.profile_set == "fr-mesures":
            return await self._send_each(batch)
        bundle, slots = _combine(batch)
        status, answer, retry_after, reason = await self._post(bundle)
        if status is None or status in _RETRYABLE:
            return [_retry(s.envelope, reason, retry_after) for s in slots]
        if status == 403:  # parked where an operator sees it; `edge outbox retry` after a fix
            return [
                _rejected(s.envelope, f"authorisation refused by the server: {reason}")
                for s in slots
            ]
        if 400 <= status < 500:
            if len(batch) > 1:  # find the bad reading: each alone, the others go through
                outcomes: list[Outcome] = []
                for envelope in batch:
                    outcomes += await self.send([envelope])
                return outcomes
            return [_rejected(batch[0], reason)]
        if not 200 <= status < 300 or not isinstance(answer, dict):
            return [_retry(s.envelope, f"unexpected answer {status}", retry_after) for s in slots]
        responses = answer.get("entry") or []
        if len(responses) != len(bundle["entry"]):
            return [_retry(s.envelope, "answer does not match the bundle", None) for s in slots]
        return [_judge(slot, responses, bundle) for slot in slots]

    async def _send_each(self, batch: Sequence[Envelope]) -> list[Outcome]:
        """fr-mesures: envelope after envelope, until the server fails one for a passing reason
        (the rest wait for the next try, untouched)."""
        outcomes: list[Outcome] = []
        for envelope in batch:
            if outcomes and outcomes[-1].status is OutcomeStatus.RETRY:
                outcomes.append(_retry(envelope, "not tried: the server was failing", None))
            else:
                outcomes.append(await self._send_feeds(envelope))
        return outcomes

    async def _send_feeds(self, envelope: Envelope) -> Outcome:
        """One envelope as MES feed bundles, one request each; an Observation that may already
        be there is looked up first."""
        try:
            feeds = feed_bundles(orjson.loads(envelope.body))
        except (orjson.JSONDecodeError, MappingError, KeyError, TypeError) as exc:
            return _rejected(envelope, f"not a fr-mesures bundle: {type(exc).__name__}")
        done: list[EntryOutcome] = []
        for feed in feeds:
            observation = feed["entry"][-1]["resource"]
            if envelope.maybe_sent or self.search_first:
                status, found, retry_after, reason = await self._find(observation)
                why = f"looking for a copy already there: {reason}"
                if status == 403:
                    return _rejected(envelope, f"authorisation refused by the server: {why}", done)
                if status is not None and 400 <= status < 500 and status not in _RETRYABLE:
                    # a server that cannot search identifiers: sending could make a second copy
                    return _rejected(envelope, f"the server refused the lookup, {why}", done)
                if status is None or not 200 <= status < 300:
                    return _retry(envelope, why, retry_after, done)
                if found:
                    done.append(EntryOutcome("Observation", "exists", found))
                    continue
            outcome = await self._post_one(envelope, feed, done)
            if outcome is not None:
                return outcome
        return _delivered(envelope, done)

    async def _post_one(
        self, envelope: Envelope, bundle: dict[str, Any], done: list[EntryOutcome]
    ) -> Outcome | None:
        """Post one bundle that belongs to ``envelope`` alone; None when all of it landed (its
        entries appended to ``done``), else the envelope's outcome."""
        status, answer, retry_after, reason = await self._post(bundle)
        if status is None or status in _RETRYABLE:
            return _retry(envelope, reason, retry_after, done)
        if status == 403:
            return _rejected(envelope, f"authorisation refused by the server: {reason}", done)
        if 400 <= status < 500:
            return _rejected(envelope, reason, done)
        if not 200 <= status < 300 or not isinstance(answer, dict):
            return _retry(envelope, f"unexpected answer {status}", retry_after, done)
        responses = answer.get("entry") or []
        if len(responses) != len(bundle["entry"]):
            return _retry(envelope, "answer does not match the bundle", None, done)
        outcome = _judge(_Slot(envelope, list(range(len(responses)))), responses, bundle)
        done.extend(outcome.entries)
        if outcome.status is OutcomeStatus.DELIVERED:
            return None
        return dataclasses.replace(outcome, entries=tuple(done))  # with what landed before

    async def _find(self, observation: dict[str, Any]) -> tuple[int | None, str, float | None, str]:
        """Look the Observation up by its identifier: (status, "Observation/<id>" or "",
        Retry-After, reason). ``POST _search`` keeps the identifier (it names the patient) out
        of URLs, hence out of proxy and server access logs; only a hit carrying exactly that
        identifier counts, as a lenient server may ignore a parameter and answer anything."""
        identifier = (observation.get("identifier") or [{}])[0]
        system, value = str(identifier.get("system", "")), str(identifier.get("value", ""))
        form = httpx.QueryParams({"identifier": search_token(system, value), "_count": "10"})
        status, answer, retry_after, reason = await self._call(
            "POST",
            f"{self.base_url}/Observation/_search",
            body=str(form).encode(),
            content_type="application/x-www-form-urlencoded",
        )
        found = ""
        if status is not None and 200 <= status < 300:
            found = _match(answer, system, value)
        return status, found, retry_after, reason

    async def _post(self, bundle: dict[str, Any]) -> tuple[int | None, Any, float | None, str]:
        return await self._call("POST", self.base_url, body=orjson.dumps(bundle))

    async def _call(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        content_type: str = FHIR_JSON,
    ) -> tuple[int | None, Any, float | None, str]:
        """(HTTP status or None for a network error, parsed body, Retry-After s, reason)."""
        for attempt in (0, 1):
            headers = {"Accept": FHIR_JSON, "Prefer": "handling=strict"}
            if body is not None:
                headers["Content-Type"] = content_type
            if self.token is not None:
                try:
                    headers["Authorization"] = f"Bearer {await self.token(attempt > 0)}"
                except Exception as exc:  # token endpoint down: a transient failure
                    return None, None, None, f"no access token: {type(exc).__name__}"
            try:
                response = await self.client.request(method, url, content=body, headers=headers)
            except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
                # no answer (with TLS 1.3 a refused client certificate can surface as a bare
                # SSLError on the first read): the conditional creates make a resend safe
                return None, None, None, f"{type(exc).__name__} talking to the FHIR server"
            if response.status_code == 401 and self.token is not None and attempt == 0:
                log.info("FHIR server %s answered 401: refreshing the token once", self.name)
                continue
            try:
                answer = response.json()
            except ValueError:
                answer = None
            retry_after = _retry_after(response.headers.get("Retry-After"))
            reason = f"HTTP {response.status_code}"
            outcome_text = _outcome_text(answer)
            if outcome_text:
                reason += f": {outcome_text}"
            return response.status_code, answer, retry_after, reason
        raise AssertionError("unreachable")  # pragma: no cover


def _combine(batch: Sequence[Envelope]) -> tuple[dict[str, Any], list[_Slot]]:
    """One transaction Bundle from the envelopes' own bundles; an entry repeated verbatim (the
    same PhgDevice and PhdDevice in every reading) is sent once and counts for each."""
    entries: list[dict[str, Any]] = []
    by_url: dict[str, int] = {}
    slots: list[_Slot] = []
    for envelope in batch:
        own: list[int] = []
        for entry in orjson.loads(envelope.body)["entry"]:
            url = entry.get("fullUrl")
            index = by_url.get(url) if url else None
            if index is None or entries[index] != entry:
                index = len(entries)
                entries.append(entry)
                if url:
                    by_url[url] = index
            own.append(index)
        slots.append(_Slot(envelope, own))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, slots


def _judge(slot: _Slot, responses: list[Any], bundle: dict[str, Any]) -> Outcome:
    """A reading's outcome from its entries' answers, with what happened to each resource."""
    entries: list[EntryOutcome] = []
    statuses: list[int] = []
    rejected = ""
    for index in slot.entries:
        answer = responses[index].get("response") or {}
        resource_type = str((bundle["entry"][index].get("resource") or {}).get("resourceType", ""))
        status_text = str(answer.get("status", ""))
        try:
            status = int(status_text.split()[0])
        except (ValueError, IndexError):
            return _retry(slot.envelope, "an entry has no status in the answer", None, entries)
        statuses.append(status)
        if 400 <= status < 500 and status not in _RETRYABLE:
            detail = _outcome_text(answer.get("outcome"))
            entries.append(EntryOutcome(resource_type, "rejected", "", detail or str(status)))
            rejected = rejected or (f"entry {status}: {detail}" if detail else f"{status}")
        elif 200 <= status < 300:
            result = "created" if status == 201 else "exists"
            entries.append(EntryOutcome(resource_type, result, _location(answer)))
    if rejected:
        return _rejected(slot.envelope, rejected, entries)
    if all(200 <= s < 300 for s in statuses):
        return _delivered(slot.envelope, entries)
    return _retry(slot.envelope, f"entry statuses {sorted(set(statuses))}", None, entries)


def _match(answer: Any, system: str, value: str) -> str:
    """``Observation/<id>`` of the first search hit that carries exactly ``system|value``."""
    if not isinstance(answer, dict):
        return ""
    for hit in answer.get("entry") or []:
        resource = hit.get("resource") if isinstance(hit, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
            continue
        identifiers = [i for i in resource.get("identifier") or [] if isinstance(i, dict)]
        if resource.get("id") and any(
            i.get("system") == system and i.get("value") == value for i in identifiers
        ):
            return f"Observation/{resource['id']}"
    return ""


def _location(answer: dict[str, Any]) -> str:
    """``Type/id`` from an entry's ``location`` (``Type/id/_history/v``, maybe absolute)."""
    parts = str(answer.get("location", "")).split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else ""


def _delivered(envelope: Envelope, entries: Sequence[EntryOutcome]) -> Outcome:
    created = sum(e.result == "created" for e in entries)
    return Outcome(
        envelope_id=envelope.id,
        status=OutcomeStatus.DELIVERED,
        reason=f"{created} created, {len(entries) - created} already there",
        entries=tuple(entries),
    )


def _retry(
    envelope: Envelope,
    reason: str,
    retry_after: float | None,
    entries: Sequence[EntryOutcome] = (),
) -> Outcome:
    return Outcome(
        envelope_id=envelope.id,
        status=OutcomeStatus.RETRY,
        reason=reason,
        retry_after=retry_after,
        entries=tuple(entries),
    )


def _rejected(envelope: Envelope, reason: str, entries: Sequence[EntryOutcome] = ()) -> Outcome:
    return Outcome(
        envelope_id=envelope.id,
        status=OutcomeStatus.REJECTED,
        reason=reason,
        entries=tuple(entries),
    )


def _retry_after(header: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _outcome_text(resource: Any) -> str:
    """The issues of an OperationOutcome, short: issue code, detail codes and the element at
    fault. Free-text diagnostics are left out: servers may quote the submitted value, and this
    text is kept in the outbox and may reach logs."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "OperationOutcome":
        return ""
    parts = []
    for issue in resource.get("issue") or []:
        details = (issue.get("details") or {}).get("coding") or []
        detail = ",".join(str(c.get("code", "")) for c in details if isinstance(c, dict))
        where = ",".join(str(e) for e in issue.get("expression") or [])
        words = (str(issue.get("code", "")), detail, f"at {where}" if where else "")
        parts.append(" ".join(w for w in words if w))
    return "; ".join(parts)[:_REASON_LIMIT]
