"""The whole MQTT path: emulated devices -> the daemon's ``mqtt`` destination -> a real mosquitto
-> ``edge bridge`` -> the real FHIR server. Every reading lands once, in the PHD form and in the
fr-mesures form; the devices replaying their memories (even with the gateway's outbox lost)
add nothing. Consent is checked at both ends: the gateway's grant, then the bridge's gate
against the patient's Consents on the record server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.bridge import Bridge, build_bridge, load_bridge_config
from gateway.consent import ConsentStore, build_consent
from tests.e2e.helpers import PATIENT, config, outbox_status, run_until_idle, wait_for
from tests.support.mosquitto import Subscriber

WSS_SYSID = "00-1B-2C-FF-FE-3D-4E-5F"
GLS_SYSID = "00-1B-2C-FF-FE-3D-4E-62"
SOLUTION_OID = "1.2.250.1.999.1.3"


def _gateway(tmp_path: Path, broker: Any, **mapping: Any) -> Any:
    cfg = config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["generic-wss", "generic-gls"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[
            {"device": WSS_SYSID, "user_index": 1, "patient": PATIENT},
            {"device": GLS_SYSID, "patient": PATIENT},
        ],
        destinations=[
            {
                "type": "mqtt",
                "name": "broker",
                "host": broker.host,
                "port": broker.port,
                "allow_plaintext": True,
                **mapping,
            }
        ],
    )
    store = ConsentStore(cfg.gateway.data_dir / "consent.sqlite")
    for category in ("vital-signs", "glucose"):
        store.grant(PATIENT, "broker", category, recorded_by="test")
    store.close()
    return cfg


def _record_consents(server: Any, kind: str = "permit") -> None:
    """The patient's Consents on the record server, for the bridge's destination."""
    resource = build_consent(
        patient=PATIENT,
        destination="record",
        categories=["vital-signs", "glucose"],
        kind=kind,
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
        recorded_by="the patient, at the record",
    )
    response = server.post("Consent", resource)
    assert response.status_code == 201, response.text


def _bridge_config(path: Path, broker: Any, server: Any, **destination: Any) -> Path:
    lines = [
        "[bridge]",
        f'host = "{broker.host}"',
        f"port = {broker.port}",
        "allow_plaintext = true",
        'client_id = "bridge-e2e"',
        'destination = "record"',
        "linger = 0.05",
        "retry_base = 0.2",
        "retry_max = 2.0",
        "",
        "[[destinations]]",
        'type = "fhir"',
        'name = "record"',
        f'base_url = "{server.base_url}"',
        f'ca_file = "{server.ca_file}"',
    ]
    lines += [f'{key} = "{value}"' for key, value in destination.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def _bridge(path: Path) -> AsyncIterator[Bridge]:
    bridge = build_bridge(load_bridge_config(path))
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        async with asyncio.timeout(10):
            await bridge.subscribed.wait()
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def _values(server: Any, code: str) -> list[Decimal]:
    found = server.search("Observation", {"subject:identifier": PATIENT}, code=code)
    return sorted(Decimal(str(o["valueQuantity"]["value"])) for o in found if "valueQuantity" in o)


async def _lose_outbox_and_replay(cfg: Any) -> None:
    for suffix in ("", "-wal", "-shm"):
        (cfg.gateway.data_dir / f"outbox.sqlite{suffix}").unlink(missing_ok=True)
    await run_until_idle(cfg)


async def test_devices_to_the_record_through_mqtt_and_the_bridge(tmp_path, mosquitto, fhir_server):
    cfg = _gateway(tmp_path, mosquitto)
    _record_consents(fhir_server)
    async with _bridge(_bridge_config(tmp_path / "bridge.toml", mosquitto, fhir_server)) as bridge:
        await run_until_idle(cfg)  # the bridge's subscription exists: every PUBACK is 0x00
        status = await outbox_status(cfg)
        sent = status.by_destination["broker"]["done"]
        assert set(status.by_destination["broker"]) == {"done"}

        def everything_written() -> bool:
            return bridge.counts.acked == sent

        await wait_for(everything_written, timeout=30)
        weights = _values(fhir_server, "29463-7")
        glucose = _values(fhir_server, "41653-7")
        assert weights == [Decimal("71.950"), Decimal("72.100"), Decimal("72.350")]
        assert glucose == [Decimal("98"), Decimal("111"), Decimal("142")]
        assert bridge.counts.dead_lettered == 0

        await _lose_outbox_and_replay(cfg)  # published again: the server keeps one of each
        await wait_for(lambda: bridge.counts.acked >= 2 * sent - 2, timeout=30)
        assert _values(fhir_server, "29463-7") == weights
        assert _values(fhir_server, "41653-7") == glucose


async def test_the_fr_mesures_form_through_mqtt_and_the_bridge(tmp_path, mosquitto, fhir_server):
    """The gateway maps to the Mon espace santé form, the bridge's destination sends it as MES
    takes it (one Observation a transaction, each looked up first): no BMI, nothing twice."""
    cfg = _gateway(tmp_path, mosquitto, profile_set="fr-mesures", solution_oid=SOLUTION_OID)
    _record_consents(fhir_server)
    bridge_toml = _bridge_config(
        tmp_path / "bridge.toml",
        mosquitto,
        fhir_server,
        profile_set="fr-mesures",
        solution_oid=SOLUTION_OID,
    )
    async with _bridge(bridge_toml) as bridge:
        await run_until_idle(cfg)
        status = await outbox_status(cfg)
        sent = status.by_destination["broker"]["done"]
        await wait_for(lambda: bridge.counts.acked == sent, timeout=30)
        weights = _values(fhir_server, "29463-7")
        assert weights == [Decimal("71.950"), Decimal("72.100"), Decimal("72.350")]
        assert fhir_server.search("Observation", code="39156-5") == []  # no BMI
        for o in fhir_server.search("Observation"):
            assert o["meta"]["source"] == f"urn:oid:{SOLUTION_OID}"
        before = len(fhir_server.search("Observation"))

        await _lose_outbox_and_replay(cfg)
        await wait_for(lambda: bridge.counts.acked >= 2 * sent - 2, timeout=30)
        assert len(fhir_server.search("Observation")) == before
        assert bridge.counts.dead_lettered == 0


async def test_a_consent_withdrawn_at_the_record_stops_the_bridge_writing(
    tmp_path, mosquitto, fhir_server
):
    """The gateway holds a grant and publishes; the patient denied at the record: the bridge's
    gate refuses every reading (dead letters, with the reason), the server gets none."""
    cfg = _gateway(tmp_path, mosquitto)
    _record_consents(fhir_server, kind="deny")
    bridge_toml = _bridge_config(tmp_path / "bridge.toml", mosquitto, fhir_server)
    with Subscriber(mosquitto.host, mosquitto.port, topic="edge/+/dead-letter/#") as dead:
        async with _bridge(bridge_toml) as bridge:
            await run_until_idle(cfg)
            sent = (await outbox_status(cfg)).by_destination["broker"]["done"]
            await wait_for(lambda: bridge.counts.acked == sent, timeout=30)
            assert bridge.counts.consent_denied == sent == bridge.counts.dead_lettered
            letters = await asyncio.to_thread(dead.wait_for, sent, 10)
    assert fhir_server.search("Observation") == []
    reasons = [dict(letter.user_properties)["reason"] for letter in letters]
    assert all(r.startswith("consent denied at the record: ") for r in reasons), reasons
