"""Emulated blood-pressure monitor over the bumble link into the local record."""

from __future__ import annotations

from firmware_profiles import load_profiles
from tests.e2e.helpers import PATIENT, config, grant, observations, outbox_status, run_until_idle

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


async def test_reserved_bits_are_ignored_not_rejected(tmp_path):
    cfg = config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["acme-bp7-rfu"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[{"device": "00-1B-2C-FF-FE-3D-4E-62", "user_index": 1, "patient": PATIENT}],
    )
    grant(cfg)
    daemon, _ = await run_until_idle(cfg)
    assert daemon.emulators[0].acked == [0, 1]
    panels = await observations(cfg, patient=PATIENT, code="85354-9")
    got = sorted(
        (
            p["effectiveDateTime"],
            _component(p, "8480-6")["valueQuantity"]["value"],
            _component(p, "8462-4")["valueQuantity"]["value"],
        )
        for p in panels
    )
    assert got == [("2026-11-22T08:30:00+01:00", 138, 88), ("2026-11-23T08:31:00+01:00", 141, 90)]
    assert all(
        _component(p, "150023")["dataAbsentReason"]["coding"][0]["code"] == "not-a-number"
        for p in panels
    )
    status = await outbox_status(cfg)
    assert status.quarantined == []


async def test_a_zero_map_is_corrected_to_not_measured_and_the_fix_is_recorded(tmp_path):
    import json

    from gateway.outbox import Outbox

    cfg = config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["acme-bp5-zero-map"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[{"device": "00-1B-2C-FF-FE-3D-4E-63", "user_index": 1, "patient": PATIENT}],
    )
    grant(cfg)
    await run_until_idle(cfg)
    (panel,) = await observations(cfg, patient=PATIENT, code="85354-9")
    mean = _component(panel, "150023")
    assert "valueQuantity" not in mean  # never stored as 0 mmHg
    assert mean["dataAbsentReason"]["coding"][0]["code"] == "not-a-number"
    async with Outbox(cfg.gateway.data_dir / "outbox.sqlite") as outbox:  # payloads encrypted
        (payload,) = await outbox.stored_payloads()
    assert json.loads(payload)["corrections"] == [
        "mean-arterial-pressure: 0 read as not measured (acme-bp5-zero-map)"
    ]
