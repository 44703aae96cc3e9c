"""The FHIR uplink in the ``fr-mesures`` form (Mon espace santé) against the real FHIR server:
one Observation per transaction with its Device, and no second copy of an Observation after a
crash, a lost answer or a second gateway, although the Observations carry no conditional create.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from drivers.models import DeviceIdentity, PatientRef, Reading
from gateway.serialize import dumps
from gateway.uplinks.base import Envelope, OutcomeStatus
from gateway.uplinks.fhir import FhirUplink
from mappers.fr_mesures import feed_bundles, map_reading_fr
from mappers.phd import observation_identifier, primary_observation_code
from tests.mappers.factories import GATEWAY, quantity, reading
from tests.support.fhir_server import FhirServer

PATIENT = PatientRef(system="urn:oid:1.2.250.1.999.7.1", value="3f9c2a7e41b0")
SOLUTION_OID = "1.2.250.1.999.1.3"
BPM = DeviceIdentity(
    address="C4:7C:8D:6A:1F:02",
    system_id="C47C8DFFFE6A1F02",
    manufacturer="ACME Health",
    model="BP-7",
    firmware="1.0.3",
)


def _bp(minutes: int = 0, systolic: str = "121") -> Reading:
    r = reading(
        quantity("systolic", systolic, "mm[Hg]"),
        quantity("diastolic", "79", "mm[Hg]"),
        quantity("mean-arterial-pressure", "93", "mm[Hg]"),
        quantity("pulse-rate", "72", "/min"),
        kind="blood-pressure",
        device=BPM,
    )
    assert r.device_time is not None
    return replace(
        r,
        device_time=r.device_time + timedelta(minutes=minutes),
        effective_time=r.effective_time + timedelta(minutes=minutes),
    )


def _envelope(eid: int, r: Reading, *, maybe_sent: bool = False) -> Envelope:
    body = dumps(map_reading_fr(r, PATIENT, GATEWAY, solution_oid=SOLUTION_OID))
    key = observation_identifier(r, PATIENT, primary_observation_code(r))
    return Envelope(
        id=eid, destination="mes", idem_key=key, body=body, kind=r.kind, maybe_sent=maybe_sent
    )


async def _uplink(server: FhirServer, **options: Any) -> FhirUplink:
    uplink = FhirUplink(
        "mes",
        server.base_url,
        ca_file=Path(server.ca_file) if server.ca_file else None,
        profile_set="fr-mesures",
        **options,
    )
    await uplink.start()
    return uplink


def _observations(server: FhirServer) -> list[dict[str, Any]]:
    return server.search("Observation", {"subject:identifier": str(PATIENT)})


def _identifiers(server: FhirServer) -> list[str]:
    return sorted(o["identifier"][0]["value"] for o in _observations(server))


async def test_each_observation_goes_in_its_own_transaction_with_its_device(fhir_server):
    envelope = _envelope(1, _bp())
    uplink = await _uplink(fhir_server)
    try:
        [outcome] = await uplink.send([envelope])
    finally:
        await uplink.close()
    assert outcome.status is OutcomeStatus.DELIVERED
    # two feed bundles (blood pressure, heart rate): the Device created once, then found
    assert [(e.resource, e.result) for e in outcome.entries] == [
        ("Device", "created"),
        ("Observation", "created"),
        ("Device", "exists"),
        ("Observation", "created"),
    ]
    observations = _observations(fhir_server)
    assert sorted(o["code"]["coding"][0]["code"] for o in observations) == ["85354-9", "8867-4"]
    [device] = fhir_server.search("Device")
    assert {o["device"]["reference"] for o in observations} == {f"Device/{device['id']}"}
    assert {o["meta"]["source"] for o in observations} == {f"urn:oid:{SOLUTION_OID}"}
    located = {e.location for e in outcome.entries if e.resource == "Observation"}
    assert located == {f"Observation/{o['id']}" for o in observations}


async def test_a_resend_finds_what_landed_and_creates_nothing_twice(fhir_server):
    """A lost answer: the bundles reached the server, the gateway never knew. The outbox sends
    the envelope again, marked maybe-sent: each Observation is looked up first."""
    r = _bp()
    for feed in feed_bundles(orjson.loads(_envelope(1, r).body)):
        fhir_server.post_bundle(feed)  # what the first, unanswered send did
    landed = _identifiers(fhir_server)
    assert len(landed) == 2
    uplink = await _uplink(fhir_server, search_first=False)
    try:
        [outcome] = await uplink.send([_envelope(1, r, maybe_sent=True)])
    finally:
        await uplink.close()
    assert outcome.status is OutcomeStatus.DELIVERED
    assert outcome.reason == "0 created, 2 already there"
    assert [e.result for e in outcome.entries] == ["exists", "exists"]
    assert _identifiers(fhir_server) == landed


async def test_without_the_lookup_the_server_would_keep_two_copies(fhir_server):
    """Why the lookup exists: this server, like MES, does not deduplicate Observations."""
    r = _bp()
    uplink = await _uplink(fhir_server, search_first=False)
    try:
        await uplink.send([_envelope(1, r)])
        await uplink.send([_envelope(1, r)])  # first send: no lookup (resend mode)
    finally:
        await uplink.close()
    identifiers = _identifiers(fhir_server)
    assert len(identifiers) == 4 and len(set(identifiers)) == 2


async def test_search_first_protects_against_a_second_gateway(fhir_server):
    """Two gateways read the same monitor (the home hub, then the nurse's bridge): with the
    default lookup before every send, the record holds each measurement once."""
    r = _bp()
    for _gateway in range(2):
        uplink = await _uplink(fhir_server, search_first=True)
        try:
            [outcome] = await uplink.send([_envelope(1, r)])
        finally:
            await uplink.close()
        assert outcome.status is OutcomeStatus.DELIVERED
    assert outcome.reason == "0 created, 2 already there"
    assert len(_identifiers(fhir_server)) == 2


async def test_a_failure_halfway_keeps_what_landed_and_the_retry_completes_it(fhir_server):
    """The first feed bundle lands, the second gets a 503: retried later, the first is found
    and the second created; nothing twice, nothing lost."""
    r = _bp()
    uplink = await _uplink(fhir_server, search_first=False)
    posts = 0

    async def after_each_answer(response: httpx.Response) -> None:
        nonlocal posts
        if response.request.method == "POST":
            posts += 1
            if posts == 1:  # the server fails the next request, the second feed bundle
                await asyncio.to_thread(fhir_server.inject, 503, 1, 2)

    uplink.client.event_hooks["response"].append(after_each_answer)
    try:
        [first] = await uplink.send([_envelope(1, r)])
        assert first.status is OutcomeStatus.RETRY and first.retry_after == 2
        assert [(e.resource, e.result) for e in first.entries] == [
            ("Device", "created"),
            ("Observation", "created"),
        ]
        assert len(_identifiers(fhir_server)) == 1
        [second] = await uplink.send([_envelope(1, r, maybe_sent=True)])
    finally:
        await uplink.close()
    assert second.status is OutcomeStatus.DELIVERED
    assert [(e.resource, e.result) for e in second.entries] == [
        ("Observation", "exists"),
        ("Device", "exists"),
        ("Observation", "created"),
    ]
    assert len(_identifiers(fhir_server)) == 2


async def test_a_failed_lookup_is_retried_and_sends_nothing(fhir_server):
    fhir_server.inject(503, count=1, retry_after=3, path="/Observation")
    uplink = await _uplink(fhir_server, search_first=True)  # the configuration's default
    try:
        [outcome] = await uplink.send([_envelope(1, _bp())])
    finally:
        await uplink.close()
    assert outcome.status is OutcomeStatus.RETRY and outcome.retry_after == 3
    assert outcome.reason.startswith("looking for a copy already there: HTTP 503")
    assert _identifiers(fhir_server) == []


async def test_a_refused_observation_is_rejected_with_what_landed_before_it(fhir_server):
    good, bad = _envelope(1, _bp(0)), _envelope(2, _bp(1))
    bundle = orjson.loads(bad.body)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Observation" and resource["code"]["coding"][0]["code"] == (
            "8867-4"
        ):
            del resource["status"]  # required by FHIR R4: refused
    bad = replace(bad, body=orjson.dumps(bundle))
    uplink = await _uplink(fhir_server)
    try:
        outcomes = await uplink.send([bad, good])
    finally:
        await uplink.close()
    assert [o.status for o in outcomes] == [OutcomeStatus.REJECTED, OutcomeStatus.DELIVERED]
    rejected = outcomes[0]
    assert rejected.reason == "entry 400: structure at Observation.status"
    # the blood pressure of the bad envelope landed before its heart rate was refused
    assert [(e.resource, e.result) for e in rejected.entries] == [
        ("Device", "created"),
        ("Observation", "created"),
        ("Device", "exists"),
        ("Observation", "rejected"),
    ]
    assert len(_identifiers(fhir_server)) == 3


async def test_a_body_that_is_not_a_fr_mesures_bundle_is_rejected_alone(fhir_server):
    uplink = await _uplink(fhir_server)
    try:
        outcomes = await uplink.send(
            [
                Envelope(id=1, destination="mes", idem_key="x", body=b"not json"),
                _envelope(2, _bp()),
            ]
        )
    finally:
        await uplink.close()
    assert outcomes[0].status is OutcomeStatus.REJECTED
    assert outcomes[0].reason.startswith("not a fr-mesures bundle")
    assert outcomes[1].status is OutcomeStatus.DELIVERED


async def test_a_server_that_cannot_look_identifiers_up_gets_nothing_sent(fhir_server):
    """Sending without the lookup could make a second copy: the reading is quarantined with the
    reason, for an operator to decide (search_before_send = "resend", or the server fixed)."""
    fhir_server.inject(400, count=1, path="/Observation")
    uplink = await _uplink(fhir_server, search_first=True)
    try:
        [outcome] = await uplink.send([_envelope(1, _bp())])
    finally:
        await uplink.close()
    assert outcome.status is OutcomeStatus.REJECTED
    assert outcome.reason.startswith("the server refused the lookup")
    assert _identifiers(fhir_server) == []


async def test_the_patient_never_shows_in_a_url_or_a_log(fhir_server, caplog):
    """The identifier names the patient: it travels in the body of POST _search, never in a
    URL (proxies and servers log those), and no log record carries it."""
    caplog.set_level(logging.DEBUG)
    urls: list[str] = []

    async def record(request: httpx.Request) -> None:
        urls.append(str(request.url))

    uplink = await _uplink(fhir_server, search_first=True)
    uplink.client.event_hooks["request"].append(record)
    try:
        [outcome] = await uplink.send([_envelope(1, _bp())])
    finally:
        await uplink.close()
    assert outcome.status is OutcomeStatus.DELIVERED
    assert any(u.endswith("/Observation/_search") for u in urls)
    assert not [u for u in urls if PATIENT.value in u or "urn%3Aoid" in u]
    assert PATIENT.value not in caplog.text


async def test_when_the_server_fails_the_rest_of_the_batch_waits_untouched(fhir_server):
    fhir_server.inject(503, count=1, retry_after=1)
    uplink = await _uplink(fhir_server)
    try:
        outcomes = await uplink.send([_envelope(1, _bp(0)), _envelope(2, _bp(1))])
    finally:
        await uplink.close()
    assert [o.status for o in outcomes] == [OutcomeStatus.RETRY, OutcomeStatus.RETRY]
    assert outcomes[1].reason == "not tried: the server was failing"
    assert _identifiers(fhir_server) == []
