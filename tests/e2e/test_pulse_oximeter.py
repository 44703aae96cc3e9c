"""An emulated pulse oximeter through the whole gateway: spot-checks and the continuous stream
into the local record, values exact, spot-checks never duplicated."""

from __future__ import annotations

from decimal import Decimal

from tests.e2e.helpers import PATIENT, config, grant, observations, run_until_idle

PLX_SYSID = "00-1B-2C-FF-FE-3D-4E-6A"
DEVICE_TIMES_END = "2026-11-24"  # the profile's spot-checks are all before this day


def _config(tmp_path):
    return config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["generic-plx"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[{"device": PLX_SYSID, "patient": PATIENT}],
    )


async def test_spot_checks_and_the_stream_reach_the_record(tmp_path):
    cfg = _config(tmp_path)
    grant(cfg)
    await run_until_idle(cfg)
    spo2 = await observations(cfg, patient=PATIENT, code="2708-6")
    values = sorted((o["effectiveDateTime"], o["valueQuantity"]["value"]) for o in spo2)
    timed = [v for v in values if v[0] < DEVICE_TIMES_END]  # spot-checks: the device clock
    assert timed == [
        ("2026-11-22T07:40:00+01:00", Decimal("97")),
        ("2026-11-22T21:05:30+01:00", Decimal("95")),
        ("2026-11-23T07:45:00+01:00", Decimal("98")),
        ("2026-11-23T07:46:10+01:00", Decimal("97.5")),
    ]
    streamed = [v for v in values if v not in timed]  # the continuous sample: receipt time
    assert [v[1] for v in streamed] == [Decimal("96")]
    pulses = await observations(cfg, patient=PATIENT, code="8867-4")
    assert sorted(o["valueQuantity"]["value"] for o in pulses) == [
        Decimal(v) for v in ("62", "63", "64", "66", "71")
    ]
    for o in spo2 + pulses:
        assert o["valueQuantity"]["unit"] in ("%", "/min", "beats/minute")

    # the oximeter sends its stored spot-checks again: nothing new for them
    await run_until_idle(cfg)
    again = await observations(cfg, patient=PATIENT, code="2708-6")
    assert sorted(
        o["effectiveDateTime"] for o in again if o["effectiveDateTime"] < "2026-11-24"
    ) == [v[0] for v in timed]
