"""An emulated glucose meter through the whole gateway: pairing, RACP, consent, the local record."""

from __future__ import annotations

from gateway.consent import ConsentStore
from tests.e2e.helpers import PATIENT, config, observations, outbox_status, run_until_idle

METER_SYSID = "00-1B-2C-FF-FE-3D-4E-62"


def _config(tmp_path):
    return config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["generic-gls"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[{"device": METER_SYSID, "patient": PATIENT}],
    )


def _grant_all(cfg) -> None:
    store = ConsentStore(cfg.gateway.data_dir / "consent.sqlite")
    store.grant(PATIENT, "record", "*", recorded_by="test")
    store.close()


def _glucose(observation) -> bool:
    return any(
        c["system"] == "http://loinc.org" and c["code"] in ("41653-7", "14743-9", "2339-0")
        for c in observation["code"]["coding"]
    ) or any(
        c["system"] == "urn:iso:std:iso:11073:10101" and c["code"] in ("160184", "160188")
        for c in observation["code"]["coding"]
    )


async def test_meter_records_reach_the_record_once_and_control_solution_never(tmp_path):
    cfg = _config(tmp_path)
    _grant_all(cfg)
    daemon, _events = await run_until_idle(cfg)
    assert daemon.emulators[0].pairings == 1
    stored = [o for o in await observations(cfg, patient=PATIENT) if _glucose(o)]
    values = sorted(
        (o["effectiveDateTime"], str(o.get("valueQuantity", {}).get("value"))) for o in stored
    )
    assert values == [
        ("2026-11-21T07:30:00+01:00", "111"),
        ("2026-11-21T12:45:10+01:00", "142"),
        ("2026-11-22T07:30:40+01:00", "98"),  # base time + 2 minutes offset
        ("2026-11-22T12:10:00+01:00", "None"),  # NaN: dataAbsentReason, no value
    ]  # the 120 mg/dL control-solution check at 09:00 is not there
    assert {o["valueQuantity"]["unit"] for o in stored if "valueQuantity" in o} == {"mg/dL"}
    # the meter flagged the last record's time as faulty: kept, not sent, reason visible
    status = await outbox_status(cfg)
    assert [q["reason"].split(":")[1].strip() for q in status.quarantined] == ["status time-fault"]

    # the same meter again (a new process has forgotten the bond: pairing again) adds nothing
    again, _ = await run_until_idle(cfg)
    assert again.emulators[0].pairings == 1
    assert len([o for o in await observations(cfg, patient=PATIENT) if _glucose(o)]) == 4
    assert len((await outbox_status(cfg)).quarantined) == 1
