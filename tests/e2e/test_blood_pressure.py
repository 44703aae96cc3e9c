"""Emulated blood-pressure monitor over the bumble link into the local record."""

from __future__ import annotations

from firmware_profiles import load_profiles
from tests.e2e.helpers import PATIENT, config, grant, observations, run_until_idle

BPM_SYSID = "00-1B-2C-FF-FE-3D-4E-60"


def _component(obs, loinc_or_mdc):
    for component in obs["component"]:
        if any(c["code"] == loinc_or_mdc for c in component["code"]["coding"]):
            return component
    raise AssertionError(f"no component {loinc_or_mdc}")


async def test_blood_pressure_readings_arrive_exactly_and_once(tmp_path):
    cfg = config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["generic-bps"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[{"device": BPM_SYSID, "user_index": 1, "patient": PATIENT}],
    )
    grant(cfg)
    await run_until_idle(cfg)

    profile = load_profiles()["generic-bps"]
    assert profile.emulation is not None
    sent = {r.time: r for r in profile.emulation.stored + profile.emulation.live}
    panels = await observations(cfg, patient=PATIENT, code="85354-9")
    assert len(panels) == len(sent)
    for panel in panels:
        reading = sent[panel["effectiveDateTime"][:19]]
        systolic = _component(panel, "8480-6")["valueQuantity"]
        diastolic = _component(panel, "8462-4")["valueQuantity"]
        assert str(systolic["value"]) == str(reading.systolic) and systolic["code"] == "mm[Hg]"
        assert str(diastolic["value"]) == str(reading.diastolic)
        mean = _component(panel, "150023")
        if reading.mean_arterial is not None and reading.mean_arterial.is_nan():
            # a monitor that does not compute MAP sends NaN: kept as an explicit absence
            assert "valueQuantity" not in mean
            assert mean["dataAbsentReason"]["coding"][0]["code"] == "not-a-number"
        else:
            assert str(mean["valueQuantity"]["value"]) == str(reading.mean_arterial)
    pulses = await observations(cfg, patient=PATIENT, code="8867-4")
    assert sorted(str(p["valueQuantity"]["value"]) for p in pulses) == sorted(
        str(r.pulse) for r in sent.values()
    )

    await run_until_idle(cfg)  # the monitor sends its memory again: nothing new in the record
    assert len(await observations(cfg, patient=PATIENT, code="85354-9")) == len(sent)
