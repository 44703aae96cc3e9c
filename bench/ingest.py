"""Ingest throughput: decode + map + durable enqueue, against two baselines run in the same process.

(a) a raw SQLite insert of the very bytes the pipeline stores, same batch size, same durability
    (WAL, synchronous=FULL, same aiosqlite driver): how much the pipeline costs over pure storage;
(b) the same pipeline building fhir.resources R4B models from the mapped dicts instead of filling
    the reading shape's bundle template (``mappers.phd_template``): why the hot path builds none.
Both pipelines run as the daemon ingests under load: batches go to the outbox's group-commit
writer (``Outbox.submit``, one transaction per batch: ``max_batch`` is the batch size) and the
next batch is decoded and mapped while the previous one commits (at most ``INFLIGHT`` batches
outstanding, as with two devices sending at once: a device waits for its reading to be durable
before it is confirmed, another one does not wait for it). The raw insert has nothing to overlap
with its commits. ``--sequential`` waits for each commit before building the next batch instead.
Machines here are noisy, so rounds are interleaved: rates are medians over rounds, ratios the
median of each round's ratio (its runs ran side by side); read the ratios.

    python -m bench.ingest [--readings 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drivers.codecs.date_time import DateTime
from drivers.codecs.weight_scale import Units, WeightMeasurement
from drivers.models import DeviceIdentity, GatewayInfo, PatientRef, Reading
from drivers.session import Value
from drivers.weight_scale import reading_from_measurement
from firmware_profiles import ClockPolicy
from gateway.outbox import IngestResult, NewEnvelope, Outbox
from gateway.outbox.store import Item
from gateway.serialize import dumps, reading_to_json
from mappers.phd import (
    map_reading,
    observation_identifier,
    primary_observation_code,
    transaction_bundle,
)
from mappers.phd_template import BundleTemplates

PATIENT = PatientRef(system="urn:oid:1.2.250.1.213.1.4.10", value="1850175000042")
GATEWAY = GatewayInfo(system_id="02A1B2C3D4E5F601", software_version="bench")
DEVICE = DeviceIdentity(
    address="C0:ED:6E:00:00:01",
    system_id="001B2CFFFE3D4E5F",
    manufacturer="edge project",
    model="WSS-GENERIC",
    serial="GEN-0001",
    firmware="1.4.2",
)
ZONE = UTC
TEMPLATES = BundleTemplates(dumps)  # the daemon's fast path: one template per reading shape

Build = Callable[[Reading], tuple[bytes, str]]  # reading -> (bundle bytes, idempotency key)


def payloads(n: int, *, full: bool = True) -> list[bytes]:
    """Weight Measurement values; ``full`` adds height and BMI (three Observations a reading)."""
    start = datetime(2026, 1, 1, 8, 0, 0)
    return [
        WeightMeasurement(
            units=Units.SI,
            weight_raw=14000 + i % 2000,
            timestamp=DateTime.from_datetime(start + timedelta(minutes=i)),
            user_id=1,
            bmi_raw=235 if full else None,
            height_raw=1750 if full else None,
        ).encode()
        for i in range(n)
    ]


def build_dicts(reading: Reading) -> tuple[bytes, str]:
    """The hot path: bundle bytes from the shape's template (``map_reading`` + dumps on a miss)."""
    return TEMPLATES.bundle_and_key(reading, PATIENT, GATEWAY)


def build_models(reading: Reading) -> tuple[bytes, str]:
    from fhir.resources.R4B.bundle import Bundle

    bundle = transaction_bundle(map_reading(reading, PATIENT, GATEWAY))
    body = Bundle.model_validate(bundle).model_dump_json().encode()
    return body, observation_identifier(reading, PATIENT, primary_observation_code(reading))


def pipeline_item(payload: bytes, build: Build) -> Item:
    """Everything the daemon does per indication, up to the outbox write."""
    value = Value(
        payload=payload,
        device=DEVICE,
        received_at=datetime.now(UTC),
        policy=ClockPolicy.LOCAL,
        zone=ZONE,
    )
    reading = reading_from_measurement(WeightMeasurement.decode(payload), value)
    body, key = build(reading)
    envelope = NewEnvelope(destination="record", idem_key=key, body=body, decision="permit:1:bench")
    return (
        reading.key,
        DEVICE.key,
        reading.kind,
        "vital-signs",
        str(PATIENT),
        reading.received_at.isoformat(),
        reading_to_json(reading),
        [envelope],
    )


INFLIGHT = 2  # batches handed to the outbox and not yet durable, at most


async def run_pipeline(
    path: Path, data: list[bytes], batch: int, build: Build, *, sequential: bool = False
) -> float:
    async with Outbox(path, max_batch=batch) as outbox:
        start = time.perf_counter()
        waiting: list[asyncio.Future[list[IngestResult]]] = []
        for i in range(0, len(data), batch):
            items = [pipeline_item(p, build) for p in data[i : i + batch]]
            waiting.append(outbox.submit(items))
            if sequential or len(waiting) >= INFLIGHT:
                await waiting.pop(0)
        for future in waiting:
            await future
        return len(data) / (time.perf_counter() - start)


async def run_raw(path: Path, rows: list[tuple[bytes, bytes]], batch: int) -> float:
    """The same bytes, batch and durability, through the outbox's own transaction machinery
    (one aiosqlite round trip per transaction): only the pipeline's work differs."""
    async with Outbox(path) as outbox:
        await outbox.db.execute("CREATE TABLE raw(id INTEGER PRIMARY KEY, payload BLOB, body BLOB)")
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]

            def insert(conn: sqlite3.Connection, chunk: list[tuple[bytes, bytes]] = chunk) -> None:
                conn.executemany("INSERT INTO raw(payload, body) VALUES (?, ?)", chunk)

            await outbox.atomically(insert)
        return len(rows) / (time.perf_counter() - start)


async def main(
    readings: int, rounds: int, batches: list[int], full: bool, sequential: bool = False
) -> None:
    data = payloads(readings, full=full)
    stored = [pipeline_item(p, build_dicts) for p in data]
    raw_rows = [(item[6], item[7][0].body) for item in stored]  # the same bytes the outbox keeps
    shape = "weight + height + BMI (3 Observations)" if full else "weight only (1 Observation)"
    mode = "sequential" if sequential else f"pipelined, {INFLIGHT} batches in flight"
    print(f"{readings} readings of {shape} per run, {rounds} interleaved rounds, medians ({mode})")
    for batch in batches:
        rates: dict[str, list[float]] = {"pipeline": [], "raw": [], "models": []}
        for _ in range(rounds):
            with tempfile.TemporaryDirectory() as tmp:
                base = Path(tmp)
                rates["raw"].append(await run_raw(base / "raw.sqlite", raw_rows, batch))
                rates["pipeline"].append(
                    await run_pipeline(
                        base / "dicts.sqlite", data, batch, build_dicts, sequential=sequential
                    )
                )
                model_data = data[: max(batch, readings // 4)]  # models are slow: fewer readings
                rates["models"].append(
                    await run_pipeline(
                        base / "models.sqlite",
                        model_data,
                        batch,
                        build_models,
                        sequential=sequential,
                    )
                )
        med = {k: statistics.median(v) for k, v in rates.items()}
        # ratios of runs made side by side in one round, then their median: the machine's
        # speed drifts between rounds more than between the runs of one round
        raw_ratio = statistics.median(
            p / r for p, r in zip(rates["pipeline"], rates["raw"], strict=True)
        )
        models_ratio = statistics.median(
            p / m for p, m in zip(rates["pipeline"], rates["models"], strict=True)
        )
        print(
            f"batch {batch:>3}: pipeline {med['pipeline']:>8.0f}/s"
            f" | raw insert {med['raw']:>8.0f}/s"
            f" | fhir.resources pipeline {med['models']:>7.0f}/s"
            f" || pipeline/raw = {raw_ratio:.2f}x (target >= 0.5)"
            f" | pipeline/models = {models_ratio:.1f}x (target >= 10)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1, 5, 10)")
    parser.add_argument("--weight-only", action="store_true", help="readings without height/BMI")
    parser.add_argument(
        "--sequential", action="store_true", help="build a batch only once the last one committed"
    )
    args = parser.parse_args()
    asyncio.run(
        main(
            args.readings,
            args.rounds,
            args.batch or [1, 5, 10],
            not args.weight_only,
            args.sequential,
        )
    )
