"""A body-composition scale (multi-packet records) and a blood-pressure monitor with a drifting,
settable clock, through the whole gateway into the local record."""

from __future__ import annotations

from decimal import Decimal

from tests.e2e.helpers import PATIENT, config, grant, observations, run_until_idle

BCS_SYSID = "00-1B-2C-FF-FE-3D-4E-70"
BP9_SYSID = "00-1B-2C-FF-FE-3D-4E-71"


def _config(tmp_path):
    return config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["generic-bcs", "acme-bp9-clock-drift"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[
            {"device": BCS_SYSID, "user_index": 1, "patient": PATIENT},
            {"device": BP9_SYSID, "user_index": 1, "patient": PATIENT},
        ],
    )


def _mdc(observation) -> str:
    return str(observation["code"]["coding"][0]["code"])


async def test_body_composition_and_clock_checks_reach_the_record_once(tmp_path):
    cfg = _config(tmp_path)
    grant(cfg)
    daemon, _ = await run_until_idle(cfg)
    bp9 = next(e for e in daemon.emulators if e.profile.id == "acme-bp9-clock-drift")
    assert len(bp9.clock_writes) == 1  # the slow clock was corrected once

    patient = await observations(cfg, patient=PATIENT)
    fat = sorted(
        (o["effectiveDateTime"], o.get("valueQuantity", {}).get("value"))
        for o in patient
        if _mdc(o) == "188748"
    )
    assert fat == [
        ("2026-11-22T07:12:40+01:00", Decimal("23.5")),  # the two-packet record, merged
        ("2026-11-23T07:10:05+01:00", Decimal("23.1")),
        ("2026-11-24T07:11:00+01:00", None),  # unsuccessful: dataAbsentReason
    ]
    water = [o["valueQuantity"]["value"] for o in patient if _mdc(o) == "188764"]
    assert water == [Decimal("40.450")]
    assert not [o for o in patient if _mdc(o) in ("188752",)]  # nothing guessed for muscle mass

    everything = await observations(cfg)
    coincident = [o for o in everything if _mdc(o) == "67975"]
    assert len(coincident) == 1  # one clock check for the monitor's session, shared by both
    panels = [o for o in patient if _mdc(o) == "150020"]
    assert len(panels) == 2
    for panel in panels:
        refs = {x["valueReference"]["reference"] for x in panel["extension"]}
        assert any(ref.startswith("Observation/") for ref in refs)

    # both devices again: their memories are replayed, nothing new reaches the patient
    await run_until_idle(cfg)
    assert len(await observations(cfg, patient=PATIENT)) == len(patient)
