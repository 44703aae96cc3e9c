"""Emulated scale over the bumble link into the local record: exact values, no duplicates."""

from __future__ import annotations

from decimal import Decimal

from firmware_profiles import load_profiles
from gateway.daemon import ReadingEvent
from tests.e2e.helpers import (
    PATIENT,
    config,
    grant,
    loinc,
    observations,
    outbox_status,
    run_until_idle,
    value_text,
)


async def test_every_value_reaches_the_record_exactly_as_sent(tmp_path):
    cfg = config(tmp_path)
    grant(cfg)
    _, events = await run_until_idle(cfg)

    profile = load_profiles()["generic-wss"]
    assert profile.emulation is not None
    sent = profile.emulation.stored + profile.emulation.live
    for_patient = [r for r in sent if r.user == 1]
    weights = await observations(cfg, patient=PATIENT, code="29463-7")
    assert sorted(value_text(o) for o in weights) == sorted(str(r.weight) for r in for_patient)
    heights = await observations(cfg, patient=PATIENT, code="8302-2")
    # device sends metres at 0.001 m; the R4 bodyheight profile wants cm: exact conversion
    assert sorted(value_text(o) for o in heights) == sorted(
        str(r.height.scaleb(2)) for r in for_patient if r.height is not None
    )
    assert all(o["valueQuantity"]["code"] == "cm" for o in heights)
    bmis = await observations(cfg, patient=PATIENT, code="39156-5")
    assert sorted(value_text(o) for o in bmis) == sorted(str(r.bmi) for r in for_patient if r.bmi)

    # device wall clock read in the gateway's zone (Europe/Paris, +01:00 in November)
    times = sorted(o["effectiveDateTime"] for o in weights)
    assert times == sorted(f"{r.time}+01:00" for r in for_patient)

    # user 2 is not bound: kept, never sent
    status = await outbox_status(cfg)
    assert status.unattributed == 1
    assert status.by_destination == {"record": {"done": len(for_patient)}}
    unattributed = [e for e in events if isinstance(e, ReadingEvent) and e.patient is None]
    assert [e.reading.user_index for e in unattributed] == [2]
    everything = await observations(cfg, patient=PATIENT)
    assert len(everything) == len(for_patient) * 3  # weight + height + bmi each
    assert all(loinc(o) in {"29463-7", "8302-2", "39156-5"} for o in everything)
    # the battery level read in each session is device status, about the scale, not the patient
    device_status = [o for o in await observations(cfg) if o not in everything]
    assert [o["code"]["coding"][0]["code"] for o in device_status] == ["67996"]
    assert device_status[0]["valueQuantity"]["value"] == profile.device.battery


async def test_replaying_the_same_readings_adds_no_duplicate(tmp_path):
    cfg = config(tmp_path)
    grant(cfg)
    await run_until_idle(cfg)
    first = await observations(cfg, patient=PATIENT)

    # the scale sends its whole memory again (a new session of the same device)
    _, events = await run_until_idle(cfg)
    assert all(e.duplicate for e in events if isinstance(e, ReadingEvent))
    assert len(await observations(cfg, patient=PATIENT)) == len(first)

    # even with the outbox lost, the record itself refuses duplicates (conditional create)
    (cfg.gateway.data_dir / "outbox.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        (cfg.gateway.data_dir / f"outbox.sqlite{suffix}").unlink(missing_ok=True)
    await run_until_idle(cfg)
    again = await observations(cfg, patient=PATIENT)
    assert len(again) == len(first)
    assert {o["identifier"][0]["value"] for o in again} == {
        o["identifier"][0]["value"] for o in first
    }


async def test_quirky_imperial_utc_scale_keeps_units_and_clock(tmp_path):
    cfg = config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["acme-bs440-lb"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[{"device": "C0:ED:6E:00:00:02", "patient": PATIENT}],
    )
    grant(cfg)
    await run_until_idle(cfg)
    weights = await observations(cfg, patient=PATIENT, code="29463-7")
    assert sorted(value_text(o) for o in weights) == ["180.20", "180.40"]
    assert {o["valueQuantity"]["code"] for o in weights} == {"[lb_av]"}
    # firmware writes UTC: no zone offset applied
    assert sorted(o["effectiveDateTime"] for o in weights) == [
        "2026-11-22T14:05:00+00:00",
        "2026-11-23T14:10:30+00:00",
    ]


async def test_captured_payloads_decode_to_the_published_values(tmp_path):
    cfg = config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["and-uc352ble"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[{"device": "00-09-1F-FF-FE-00-35-2B", "patient": PATIENT}],
    )
    grant(cfg)
    await run_until_idle(cfg)
    weights = await observations(cfg, patient=PATIENT, code="29463-7")
    # openScale's fixture: 65.7 kg and 65.9 kg (exact LSB 0.005 kg keeps 3 decimals)
    assert sorted(Decimal(value_text(o)) for o in weights) == [Decimal("65.7"), Decimal("65.9")]
    assert sorted(o["effectiveDateTime"] for o in weights) == [
        "2026-08-22T08:42:36+02:00",
        "2026-08-22T08:43:40+02:00",
    ]
