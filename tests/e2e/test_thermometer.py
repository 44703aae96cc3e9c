"""Emulated thermometers over the bumble link into the local record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.e2e.helpers import PATIENT, config, grant, observations, run_until_idle


async def test_temperatures_arrive_exactly_with_their_body_site(tmp_path):
    cfg = config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["generic-hts"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[{"device": "00-1B-2C-FF-FE-3D-4E-61", "patient": PATIENT}],
    )
    grant(cfg)
    await run_until_idle(cfg)
    temps = await observations(cfg, patient=PATIENT, code="8310-5")
    got = sorted(
        (
            o["effectiveDateTime"],
            str(o["valueQuantity"]["value"]),
            o["valueQuantity"]["code"],
            o["bodySite"]["coding"][0]["code"],
        )
        for o in temps
    )
    assert got == [
        ("2026-11-22T07:10:00+01:00", "36.8", "Cel", "74262004"),  # mouth
        ("2026-11-22T19:40:00+01:00", "37.45", "Cel", "74262004"),
        ("2026-11-23T07:12:00+01:00", "38.1", "Cel", "91470000"),  # armpit
    ]
    await run_until_idle(cfg)
    assert len(await observations(cfg, patient=PATIENT, code="8310-5")) == 3


async def test_an_unset_clock_is_not_trusted_and_replays_still_deduplicate(tmp_path):
    cfg = config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["acme-ft90-ear"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[{"device": "C0:ED:6E:00:00:06", "patient": PATIENT}],
    )
    grant(cfg)
    started = datetime.now(UTC)
    await run_until_idle(cfg)
    temps = await observations(cfg, patient=PATIENT, code="8310-5")
    assert sorted(str(o["valueQuantity"]["value"]) for o in temps) == ["98.6", "99.1"]
    assert {o["valueQuantity"]["code"] for o in temps} == {"[degF]"}
    assert {o["bodySite"]["coding"][0]["code"] for o in temps} == {"42859004"}  # tympanum
    for o in temps:  # receipt time, not the year 2000 the device claims
        effective = datetime.fromisoformat(o["effectiveDateTime"])
        assert started - timedelta(seconds=5) <= effective <= datetime.now(UTC)
    await run_until_idle(cfg)  # same memory again: keyed on the reported time, so no duplicate
    assert len(await observations(cfg, patient=PATIENT, code="8310-5")) == 2
