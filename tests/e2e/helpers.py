"""Building and running a real gateway (daemon + emulated scales) inside a test."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.config import Config, parse_config
from gateway.consent import ConsentStore
from gateway.daemon import Daemon, Event
from gateway.outbox import Outbox, Status
from gateway.uplinks.record_store import RecordStore

PATIENT = "urn:oid:1.2.250.1.213.1.4.10|1850175000042"
PATIENT_B = "urn:oid:1.2.250.1.213.1.4.10|2920175000017"
GENERIC_SYSID = "00-1B-2C-FF-FE-3D-4E-5F"


def config(tmp: Path, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "gateway": {"data_dir": str(tmp / "data"), "timezone": "Europe/Paris"},
        "link": {
            "backend": "bumble",
            "emulate": ["generic-wss"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        "bindings": [{"device": GENERIC_SYSID, "user_index": 1, "patient": PATIENT}],
        "destinations": [{"type": "local", "name": "record"}],
        "outbox": {"retry_base": 0.05, "retry_max": 0.5, "consent_poll": 0.1},
    }
    for key, value in sections.items():
        data[key] = value
    return parse_config(data)


def grant(cfg: Config, destination: str = "record", patient: str = PATIENT) -> None:
    store = ConsentStore(cfg.gateway.data_dir / "consent.sqlite")
    store.grant(patient, destination, "vital-signs", recorded_by="test")
    store.close()


async def run_until_idle(
    cfg: Config, timeout: float = 60.0, **kwargs: Any
) -> tuple[Daemon, list[Event]]:
    events: list[Event] = []
    daemon = Daemon(cfg, on_event=events.append, **kwargs)
    stop = asyncio.Event()
    await asyncio.wait_for(daemon.run(stop, until_idle=True), timeout)
    return daemon, events


async def run_for(daemon: Daemon, stop: asyncio.Event) -> asyncio.Task[None]:
    return asyncio.create_task(daemon.run(stop))


async def observations(cfg: Config, **search: Any) -> list[dict[str, Any]]:
    async with RecordStore(cfg.gateway.data_dir / "record.sqlite") as store:
        return list(await store.search(**search))


async def outbox_status(cfg: Config) -> Status:
    async with Outbox(cfg.gateway.data_dir / "outbox.sqlite") as outbox:
        return await outbox.status()


def value_text(observation: dict[str, Any]) -> str:
    value = observation["valueQuantity"]["value"]
    return str(value) if isinstance(value, Decimal) else json.dumps(value)


def loinc(observation: dict[str, Any]) -> str:
    return next(
        c["code"] for c in observation["code"]["coding"] if c["system"] == "http://loinc.org"
    )


async def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.1) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")
