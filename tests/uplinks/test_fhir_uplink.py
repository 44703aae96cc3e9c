"""The FHIR uplink against a real FHIR server (Medplum's router, started by the tests) over
HTTPS: bundles of several readings, replays, a rejected reading among good ones, 503 with
Retry-After, 401 with a token refresh, 403, TLS verification."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from gateway.serialize import dumps
from gateway.uplinks.base import Envelope, OutcomeStatus, UplinkError
from gateway.uplinks.fhir import FhirUplink
from mappers.phd import map_reading, observation_identifier, transaction_bundle
from tests.mappers.factories import GATEWAY, PATIENT, quantity, reading
from tests.support.fhir_server import FhirServer

WEIGHT_MDC = 188736


def _envelope(eid: int, minutes: int, weight: str = "72.35", unit: str = "kg") -> Envelope:
    r = reading(quantity("body-weight", weight, unit))
    assert r.device_time is not None
    r = replace(
        r,
        device_time=r.device_time + timedelta(minutes=minutes),
        effective_time=r.effective_time + timedelta(minutes=minutes),
    )
    body = dumps(transaction_bundle(map_reading(r, PATIENT, GATEWAY)))
    key = observation_identifier(r, PATIENT, WEIGHT_MDC)
    return Envelope(id=eid, destination="fhir", idem_key=key, body=body)


async def _uplink(server: FhirServer, **options: object) -> FhirUplink:
    uplink = FhirUplink(
        "fhir",
        server.base_url,
        ca_file=Path(server.ca_file) if server.ca_file else None,
        **options,  # type: ignore[arg-type]
    )
    await uplink.start()
    return uplink


def _weights(server: FhirServer) -> list[Decimal]:
    found = server.search("Observation", code="29463-7")
    return sorted(Decimal(str(o["valueQuantity"]["value"])) for o in found)


async def test_a_bundle_of_readings_is_created_once_and_a_replay_adds_nothing(fhir_server):
    uplink = await _uplink(fhir_server)
    try:
        batch = [_envelope(1, 0, "72.35"), _envelope(2, 1, "72.10"), _envelope(3, 2, "71.95")]
        outcomes = await uplink.send(batch)
        assert [o.status for o in outcomes] == [OutcomeStatus.DELIVERED] * 3
        # each reading: its Observation and the two devices (one shared entry in the bundle)
        assert {o.reason for o in outcomes} == {"3 created, 0 already there"}
        assert _weights(fhir_server) == [Decimal("71.95"), Decimal("72.10"), Decimal("72.35")]
        assert len(fhir_server.search("Device")) == 2  # PhdDevice and PhgDevice, sent once
        again = await uplink.send(batch)  # a lost answer: the outbox sends the same again
        assert [o.status for o in again] == [OutcomeStatus.DELIVERED] * 3
        assert {o.reason for o in again} == {"0 created, 3 already there"}
        assert len(_weights(fhir_server)) == 3 and len(fhir_server.search("Device")) == 2
    finally:
        await uplink.close()


async def test_a_rejected_reading_never_blocks_the_others(fhir_server):
    bad = _envelope(2, 1)
    bundle = orjson.loads(bad.body)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Observation":
            entry["resource"]["valueQuantity"]["code"] = "cm"  # bodyweight in cm: invalid
            entry["resource"]["valueQuantity"]["unit"] = "cm"
    bad = Envelope(id=2, destination="fhir", idem_key=bad.idem_key, body=orjson.dumps(bundle))
    uplink = await _uplink(fhir_server)
    try:
        outcomes = await uplink.send([_envelope(1, 0, "72.35"), bad, _envelope(3, 2, "71.95")])
    finally:
        await uplink.close()
    assert [o.status for o in outcomes] == [
        OutcomeStatus.DELIVERED,
        OutcomeStatus.REJECTED,
        OutcomeStatus.DELIVERED,
    ]
    assert outcomes[1].reason.startswith("entry 400")
    assert _weights(fhir_server) == [Decimal("71.95"), Decimal("72.35")]


async def test_503_with_retry_after_is_retried_then_delivered(fhir_server):
    uplink = await _uplink(fhir_server)
    try:
        fhir_server.inject(503, retry_after=2)
        (first,) = await uplink.send([_envelope(1, 0)])
        assert first.status is OutcomeStatus.RETRY and first.retry_after == 2.0
        assert "503" in first.reason
        fhir_server.inject(429)
        (second,) = await uplink.send([_envelope(1, 0)])
        assert second.status is OutcomeStatus.RETRY
        (third,) = await uplink.send([_envelope(1, 0)])
        assert third.status is OutcomeStatus.DELIVERED
    finally:
        await uplink.close()
    assert len(_weights(fhir_server)) == 1


async def test_401_gets_one_token_refresh(fhir_server_factory: Callable[..., FhirServer]):
    server = fhir_server_factory(bearer_token="fresh-token")
    asked: list[bool] = []

    async def token(refresh: bool) -> str:
        asked.append(refresh)
        return "fresh-token" if refresh else "expired-token"

    uplink = await _uplink(server, token=token)
    try:
        (outcome,) = await uplink.send([_envelope(1, 0)])
    finally:
        await uplink.close()
    assert outcome.status is OutcomeStatus.DELIVERED and asked == [False, True]


async def test_a_token_that_stays_refused_is_parked_for_an_operator(
    fhir_server_factory: Callable[..., FhirServer],
):
    server = fhir_server_factory(bearer_token="right")

    async def token(_refresh: bool) -> str:
        return "wrong"

    uplink = await _uplink(server, token=token)
    try:
        (outcome,) = await uplink.send([_envelope(1, 0)])
    finally:
        await uplink.close()
    assert outcome.status is OutcomeStatus.REJECTED and "401" in outcome.reason


async def test_403_parks_every_reading_of_the_bundle(fhir_server):
    uplink = await _uplink(fhir_server)
    try:
        fhir_server.inject(403)
        outcomes = await uplink.send([_envelope(1, 0), _envelope(2, 1)])
    finally:
        await uplink.close()
    assert [o.status for o in outcomes] == [OutcomeStatus.REJECTED] * 2
    assert all(o.reason.startswith("authorisation refused") for o in outcomes)
    assert _weights(fhir_server) == []


async def test_an_unreachable_server_means_retry(fhir_server_factory: Callable[..., FhirServer]):
    server = fhir_server_factory()
    uplink = await _uplink(server, timeout=5.0)
    server.stop()
    try:
        (outcome,) = await uplink.send([_envelope(1, 0)])
    finally:
        await uplink.close()
    assert outcome.status is OutcomeStatus.RETRY and "ConnectError" in outcome.reason


async def test_tls_verification_is_always_on(fhir_server):
    uplink = FhirUplink("fhir", fhir_server.base_url)  # the system CAs: not the test CA
    await uplink.start()
    try:
        (outcome,) = await uplink.send([_envelope(1, 0)])
    finally:
        await uplink.close()
    assert outcome.status is OutcomeStatus.RETRY and _weights(fhir_server) == []
    with pytest.raises(UplinkError, match="https"):
        FhirUplink("fhir", "http://127.0.0.1:1")


async def test_mutual_tls_client_certificate(fhir_server_factory: Callable[..., FhirServer]):
    server = fhir_server_factory(require_client_cert=True)
    assert server.tls is not None
    with_cert = await _uplink(
        server, cert_file=server.tls.client_cert, key_file=server.tls.client_key
    )
    without = await _uplink(server)
    try:
        (accepted,) = await with_cert.send([_envelope(1, 0)])
        (refused,) = await without.send([_envelope(2, 1)])
    finally:
        await with_cert.close()
        await without.close()
    assert accepted.status is OutcomeStatus.DELIVERED
    # the handshake fails (or, with TLS 1.3, the first read): a retry, never an exception
    assert refused.status is OutcomeStatus.RETRY


async def test_a_client_certificate_from_another_ca_is_refused(
    fhir_server_factory: Callable[..., FhirServer], tmp_path: Path
):
    from tests.support.mosquitto import make_tls_files

    server = fhir_server_factory(require_client_cert=True)
    stranger = make_tls_files(tmp_path / "other-pki")
    uplink = await _uplink(server, cert_file=stranger.client_cert, key_file=stranger.client_key)
    try:
        (refused,) = await uplink.send([_envelope(1, 0)])
    finally:
        await uplink.close()
    assert refused.status is OutcomeStatus.RETRY
    assert server.search("Observation") == []
