"""kill -9 of the daemon at random points during a 1,000-reading ingest: nothing confirmed to the
device is lost, nothing is duplicated in the record."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path

import pytest

from drivers.codecs.weight_scale import WeightMeasurement
from gateway.consent import ConsentStore
from gateway.uplinks.record_store import RecordStore
from tests.e2e.helpers import GENERIC_SYSID, PATIENT
from tests.e2e.processes import Emulator, count_lines, start_daemon

READINGS = 1000
KILLS = 4


def _write_config(tmp: Path, port: int) -> Path:
    config = tmp / "edge.toml"
    config.write_text(
        f"""
[gateway]
data_dir = "data"
timezone = "Europe/Paris"

[link]
backend = "bumble"
transport = "tcp-client:127.0.0.1:{port}"
scan_seconds = 0.3
idle_timeout = 2.0

[[bindings]]
device = "{GENERIC_SYSID}"
user_index = 1
patient = "{PATIENT}"

[[destinations]]
type = "local"
name = "record"

[outbox]
retry_base = 0.05
retry_max = 0.5
""",
        encoding="utf-8",
    )
    return config


def _record_rows(record: Path) -> list[tuple[str, str]]:
    """(identifier, effectiveDateTime) of every weight Observation, read while the daemon runs."""
    if not record.exists():
        return []

    async def read() -> list[tuple[str, str]]:
        async with RecordStore(record) as store:
            found = await store.search(patient=PATIENT, code="29463-7")
        return [(o["identifier"][0]["value"], o["effectiveDateTime"]) for o in found]

    return asyncio.run(read())


@pytest.mark.slow
def test_kill_9_during_ingest_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    acks = tmp_path / "acked.jsonl"
    emulator = Emulator(
        "generic-wss", "--generate", str(READINGS), "--ack-log", str(acks), cwd=tmp_path
    )
    config = _write_config(tmp_path, emulator.port)
    store = ConsentStore(tmp_path / "data" / "consent.sqlite")
    store.grant(PATIENT, "record", "vital-signs", recorded_by="test")
    store.close()
    log = tmp_path / "daemon.log"
    try:
        # kill at random points of the ingest, each time a bit further in
        targets = sorted(rng.sample(range(20, READINGS - 50), KILLS))
        for target in targets:
            daemon = start_daemon(config, log)
            deadline = time.monotonic() + 60
            while count_lines(acks) < target and time.monotonic() < deadline:
                if daemon.poll() is not None:
                    pytest.fail(f"daemon exited early (seed {seed}): {log.read_text()[-2000:]}")
                time.sleep(rng.uniform(0.0, 0.02))
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)

        # a last, undisturbed run finishes the job and stops cleanly on SIGTERM
        daemon = start_daemon(config, log)
        record = tmp_path / "data" / "record.sqlite"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if count_lines(acks) >= READINGS and len(_record_rows(record)) >= READINGS:
                break
            time.sleep(0.2)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0, log.read_text()[-2000:]
    finally:
        emulator.stop()

    acked = [json.loads(line) for line in acks.read_text().splitlines()]
    rows = _record_rows(tmp_path / "data" / "record.sqlite")
    identifiers = [identifier for identifier, _ in rows]
    assert len(identifiers) == len(set(identifiers)), f"duplicates in the record (seed {seed})"
    acked_times = set()
    for entry in acked:
        measurement = WeightMeasurement.decode(bytes.fromhex(entry["hex"]))
        assert measurement.timestamp is not None
        acked_times.add(measurement.timestamp.to_datetime())
    recorded_times = {effective[:19] for _, effective in rows}
    missing = {t for t in acked_times if t.isoformat() not in recorded_times}
    assert not missing, f"{len(missing)} confirmed readings missing (seed {seed})"
    assert len(acked) == len({e["index"] for e in acked}) == READINGS
    assert len(rows) == READINGS
    logged = log.read_text(encoding="utf-8")
    assert PATIENT.split("|")[1] not in logged  # the daemon's own log (INFO) names no patient
