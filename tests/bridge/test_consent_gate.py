"""The bridge's consent gate (gateway/bridge_consent.py): the patient's Consents on the record
server decide again right before each write, with a real broker and a real FHIR server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from gateway.bridge_consent import ConsentGate, bundle_patient, category_of
from gateway.consent import ConsentStore, build_consent
from gateway.consent.sync import ConsentSyncError
from tests.bridge.helpers import (
    DEAD_LETTERS,
    GATEWAY_ID,
    PATIENT,
    all_once,
    counts_in_server,
    envelopes,
    eventually,
    gateway,
    publish,
    running,
    write_config,
)
from tests.support.mosquitto import Subscriber

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _consent(server, kind: str = "permit") -> None:  # type: ignore[no-untyped-def]
    resource = build_consent(
        patient=str(PATIENT),
        destination="record",
        categories=["vital-signs"],
        kind=kind,
        recorded_at=T0,
        recorded_by="the patient, at the record",
    )
    response = server.post("Consent", resource)
    assert response.status_code == 201, response.text


async def test_a_permit_at_the_record_lets_readings_through(tmp_path, mosquitto, fhir_server):
    _consent(fhir_server)
    config = write_config(tmp_path / "bridge.toml", mosquitto, fhir_server, check_consent=True)
    batch = envelopes(3)
    async with running(config) as bridge, gateway(mosquitto) as uplink:
        await publish(uplink, batch)
        await eventually(all_once(fhir_server, batch))
        await eventually(lambda: bridge.counts.acked == 3)
    assert bridge.counts.consent_denied == 0 and bridge.counts.dead_lettered == 0


async def test_no_consent_at_the_record_means_dead_letters_and_nothing_written(
    tmp_path, mosquitto, fhir_server
):
    """Default deny: the record server holds no Consent for the patient."""
    config = write_config(tmp_path / "bridge.toml", mosquitto, fhir_server, check_consent=True)
    batch = envelopes(2)
    with Subscriber(mosquitto.host, mosquitto.port, topic=DEAD_LETTERS) as dead:
        async with running(config) as bridge, gateway(mosquitto) as uplink:
            await publish(uplink, batch)
            letters = await asyncio.to_thread(dead.wait_for, 2, 10)
            await eventually(lambda: bridge.counts.acked == 2)
    assert counts_in_server(fhir_server, batch) == [0, 0]
    assert {letter.topic for letter in letters} == {f"edge/{GATEWAY_ID}/dead-letter/weight"}
    reasons = [dict(letter.user_properties)["reason"] for letter in letters]
    assert all(r.startswith("consent denied at the record: ") for r in reasons), reasons
    assert not any(str(PATIENT.value) in r for r in reasons)
    assert bridge.counts.consent_denied == 2


async def test_a_record_server_that_cannot_answer_keeps_the_reading_until_it_can(
    tmp_path, mosquitto, fhir_server
):
    """The Consent search fails: nothing fresh is known, so the deny is not final; the message
    stays unacknowledged and goes once the server answers (a permit)."""
    _consent(fhir_server)
    fhir_server.inject(503, count=2, path="/Consent")
    config = write_config(
        tmp_path / "bridge.toml",
        mosquitto,
        fhir_server,
        check_consent=True,
        consent_refresh=1.0,  # a failed fetch is tried again after a second
        retry_base=0.1,
        retry_max=0.5,
    )
    batch = envelopes(1)
    async with running(config) as bridge, gateway(mosquitto) as uplink:
        await publish(uplink, batch)
        await eventually(all_once(fhir_server, batch), timeout=30)
        await eventually(lambda: bridge.counts.acked == 1)
    assert bridge.counts.consent_denied == 0 and bridge.counts.dead_lettered == 0


# -- the pieces ---------------------------------------------------------------------------------
def test_the_patient_is_the_one_the_observations_name() -> None:
    (one,) = envelopes(1)
    assert bundle_patient(one.body) == str(PATIENT)
    bundle = orjson.loads(one.body)
    observation = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    device_url = next(
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Device"
    )
    device_obs = {"resource": {"resourceType": "Observation", "subject": {"reference": device_url}}}
    bundle["entry"].append(device_obs)  # about a Device of the bundle: no patient, ignored
    assert bundle_patient(orjson.dumps(bundle)) == str(PATIENT)

    def plus(*entries: dict) -> bytes:
        return orjson.dumps({**bundle, "entry": [*bundle["entry"], *entries]})

    other = {"resource": {**observation["resource"]}}
    other["resource"]["subject"] = {"identifier": {"system": "urn:oid:1.2.3", "value": "9"}}
    assert bundle_patient(plus(other)) is None  # two patients in one bundle
    by_reference = {"resource": {**observation["resource"], "subject": {"reference": "Patient/9"}}}
    assert bundle_patient(plus(by_reference)) is None  # about whom? not said by identifier
    patient = {"resource": {"resourceType": "Patient", "identifier": [{"value": "9"}]}}
    assert bundle_patient(plus(patient)) is None  # only Observations and Devices are placed
    assert bundle_patient(b"not json") is None
    assert bundle_patient(b"[]") is None
    assert category_of("weight") == "vital-signs" and category_of("blood-glucose") == "glucose"
    assert category_of("nonsense") is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_gate_fetches_once_per_refresh_and_tells_final_from_unknown(
    tmp_path: Path,
) -> None:
    store = ConsentStore(tmp_path / "consent.sqlite")
    patient = str(PATIENT)
    fetched: list[str] = []
    failing = False

    async def fetch(who: str) -> int:
        fetched.append(who)
        if failing:
            raise ConsentSyncError("HTTP 503")
        return 0

    clock = Clock()
    gate = ConsentGate(store, "record", fetch, refresh=60.0, clock=clock)
    first = await gate.check(patient, "weight")
    assert not first.decision.permit and not first.transient  # fresh answer: nothing permits
    store.grant(patient, "record", "vital-signs", recorded_by="nurse")
    assert (await gate.check(patient, "weight")).decision.permit  # local grants decide too
    assert fetched == [patient]  # within the refresh: no second fetch
    assert not (await gate.check(patient, "blood-glucose")).decision.permit  # another category
    clock.now += 61
    failing = True
    store.revoke(patient, "record", "vital-signs")
    unknown = await gate.check(patient, "weight")
    assert not unknown.decision.permit and unknown.transient  # deny, but not final
    assert len(fetched) == 2
    await gate.check(patient, "weight")
    assert len(fetched) == 2  # a failed fetch is not retried for every message
    assert not (await gate.check(None, "weight")).transient
    assert not (await gate.check(patient, "nonsense")).decision.permit
    store.close()


@pytest.mark.parametrize("refresh", [0.0])
async def test_refresh_zero_asks_the_record_before_every_write(
    tmp_path: Path, refresh: float
) -> None:
    store = ConsentStore(tmp_path / "consent.sqlite")
    calls = 0

    async def fetch(_who: str) -> int:
        nonlocal calls
        calls += 1
        return 0

    gate = ConsentGate(store, "record", fetch, refresh=refresh)
    for _ in range(3):
        await gate.check(str(PATIENT), "weight")
    assert calls == 3
    store.close()


async def test_a_broken_fetch_is_transient_an_untrusted_answer_final_and_neither_crashes(
    tmp_path: Path,
) -> None:
    from gateway.consent.sync import ConsentUntrusted

    store = ConsentStore(tmp_path / "consent.sqlite")
    errors: list[Exception] = [RuntimeError("invalid next link"), ConsentUntrusted("malformed")]

    async def fetch(_who: str) -> int:
        raise errors.pop(0)

    clock = Clock()
    gate = ConsentGate(store, "record", fetch, refresh=60.0, clock=clock)
    broken = await gate.check(str(PATIENT), "weight")
    assert not broken.decision.permit and broken.transient
    clock.now += 31  # a failed fetch is tried again after 30 s
    untrusted = await gate.check(str(PATIENT), "weight")
    assert not untrusted.decision.permit and not untrusted.transient
    assert "cannot be read" in untrusted.decision.reason
    store.close()


async def test_a_busy_consent_file_is_transient(tmp_path: Path) -> None:

    store = ConsentStore(tmp_path / "consent.sqlite")

    async def fetch(_who: str) -> int:
        return 0

    gate = ConsentGate(store, "record", fetch, refresh=60.0)
    store.close()  # any sqlite3 error from decide: here, a closed connection
    verdict = await gate.check(str(PATIENT), "weight")
    assert verdict.transient and not verdict.decision.permit


def test_a_refresh_longer_than_the_cache_is_refused(tmp_path, mosquitto, fhir_server) -> None:
    from gateway.bridge import load_bridge_config
    from gateway.errors import ConfigError

    config = write_config(
        tmp_path / "bridge.toml",
        mosquitto,
        fhir_server,
        check_consent=True,
        consent_refresh=900,
        consent_cache_hours=0.1,
    )
    with pytest.raises(ConfigError, match="consent_refresh must be shorter"):
        load_bridge_config(config)
