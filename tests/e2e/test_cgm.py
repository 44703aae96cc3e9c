"""An emulated CGM sensor through the whole gateway: pairing, E2E-CRC, the session start time set
from the gateway clock, RACP by time offset, consent for glucose data, into the local record."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from decimal import Decimal

from gateway.consent import ConsentStore
from tests.e2e.helpers import PATIENT, config, observations, outbox_status, run_until_idle

CGM_SYSID = "00-1B-2C-FF-FE-3D-4E-69"


async def test_sensor_records_reach_the_record_with_times_from_the_session_start(tmp_path):
    cfg = config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["generic-cgm"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[{"device": CGM_SYSID, "patient": PATIENT}],
    )
    store = ConsentStore(cfg.gateway.data_dir / "consent.sqlite")
    store.grant(PATIENT, "record", "glucose", recorded_by="test")
    store.close()
    before = datetime.now().astimezone()
    daemon, _ = await run_until_idle(cfg)
    sensor = daemon.emulators[0]
    assert sensor.pairings == 1

    found = [
        o
        for o in await observations(cfg, patient=PATIENT)
        if o["code"]["coding"][0]["code"] == "160212"
    ]
    by_time = sorted((o["effectiveDateTime"], o["valueQuantity"]["value"]) for o in found)
    expected = ["112", "115", "118", "121", "119", "116", "110", "104", "98", "91", "83", "69"]
    assert [value for _, value in by_time] == [Decimal(v) for v in expected]  # lost ones too
    # 5 minutes apart from a session start the gateway wrote from its own clock
    times = [datetime.fromisoformat(t) for t, _ in by_time]
    assert all(b - a == timedelta(minutes=5) for a, b in itertools.pairwise(times))
    assert before - timedelta(minutes=60) <= times[0] <= datetime.now().astimezone()
    status = await outbox_status(cfg)
    assert status.by_destination["record"] == {"done": len(expected)}
