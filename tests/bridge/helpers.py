"""Readings, gateways, configs and bridge processes for the bridge tests.

Readings are the real thing: ``map_reading`` + ``transaction_bundle`` of the PHD mapper, published
by the real ``MqttUplink`` exactly as a gateway's ``mqtt`` destination does.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from gateway.bridge import Bridge, build_bridge, load_bridge_config
from gateway.serialize import dumps
from gateway.uplinks.base import Envelope, OutcomeStatus
from gateway.uplinks.mqtt import MqttTls, MqttUplink
from mappers.phd import (
    map_reading,
    observation_identifier,
    primary_observation_code,
    transaction_bundle,
)
from tests.mappers.factories import GATEWAY, PATIENT, quantity, reading
from tests.support.fhir_server import FhirServer
from tests.support.mosquitto import MosquittoBroker

DEAD_LETTERS = "edge/+/dead-letter/#"  # what the bridges send refused messages to, any gateway

ROOT = Path(__file__).resolve().parents[2]
EDGE = [sys.executable, "-m", "edge"]
OBSERVATION_SYSTEM = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
GATEWAY_ID = "ECDE3D4E58532D31"

# What must never reach a log above DEBUG: the patient's identifier (also inside every
# observation identifier) and the weights sent (see ``weight``).
SECRETS = (PATIENT.value, "81.2")


def weight(index: int) -> str:
    return f"81.2{index:02d}"


def envelopes(count: int, *, start: int = 0, invalid: bool = False) -> list[Envelope]:
    """``count`` weight readings, one minute apart, as the daemon queues them for a
    destination: the body is the mapper's transaction Bundle, the key its primary identifier.
    ``invalid``: the Observations say "cm", which the server refuses for a body weight."""
    made = []
    for index in range(start, start + count):
        r = reading(quantity("body-weight", weight(index), "kg"))
        assert r.device_time is not None
        r = replace(
            r,
            device_time=r.device_time + timedelta(minutes=index),
            effective_time=r.effective_time + timedelta(minutes=index),
        )
        bundle = transaction_bundle(map_reading(r, PATIENT, GATEWAY))
        if invalid:
            bundle = copy.deepcopy(bundle)
            for entry in bundle["entry"]:
                if entry["resource"]["resourceType"] == "Observation":
                    entry["resource"]["valueQuantity"]["code"] = "cm"
                    entry["resource"]["valueQuantity"]["unit"] = "cm"
        body = dumps(bundle)
        key = observation_identifier(r, PATIENT, primary_observation_code(r))
        made.append(Envelope(id=index + 1, destination="broker", idem_key=key, body=body))
    return made


@contextlib.asynccontextmanager
async def gateway(
    broker: MosquittoBroker,
    *,
    gateway_id: str = GATEWAY_ID,
    tls: MqttTls | None = None,
    client_id: str | None = None,
) -> AsyncIterator[MqttUplink]:
    """A gateway's ``mqtt`` uplink, connected."""
    uplink = MqttUplink(
        "broker",
        host=broker.host,
        port=broker.tls_port if tls is not None and broker.tls_port else broker.port,
        client_id=client_id or f"edge-{gateway_id}",
        gateway_id=gateway_id,
        tls=tls,
    )
    await uplink.start()
    try:
        async with asyncio.timeout(10):
            await uplink.wait_connected()
        yield uplink
    finally:
        await uplink.close()


async def publish(uplink: MqttUplink, batch: list[Envelope]) -> None:
    outcomes = await uplink.send(batch)
    assert [o.status for o in outcomes] == [OutcomeStatus.DELIVERED] * len(batch), outcomes


def observations(server: FhirServer, envelope: Envelope) -> list[dict[str, Any]]:
    return server.search("Observation", identifier=f"{OBSERVATION_SYSTEM}|{envelope.idem_key}")


def counts_in_server(server: FhirServer, batch: Iterable[Envelope]) -> list[int]:
    return [len(observations(server, e)) for e in batch]


async def eventually(
    check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``check`` (sync; run in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(interval)


def all_once(server: FhirServer, batch: list[Envelope]) -> Callable[[], bool]:
    return lambda: counts_in_server(server, batch) == [1] * len(batch)


def write_config(
    path: Path,
    broker: MosquittoBroker,
    server: FhirServer,
    *,
    client_id: str = "bridge-1",
    tls: tuple[Path, Path, Path] | None = None,  # ca, cert, key
    bundle_size: int = 20,
    **bridge: Any,
) -> Path:
    """A bridge-only configuration (no [link]) writing to ``server``."""
    lines = [
        "[bridge]",
        f'host = "{broker.host}"',
        f'client_id = "{client_id}"',
        'destination = "record"',
    ]
    if tls is not None:
        assert broker.tls_port is not None
        ca, cert, key = tls
        lines += [
            f"port = {broker.tls_port}",
            f'ca_file = "{ca}"',
            f'cert_file = "{cert}"',
            f'key_file = "{key}"',
        ]
    else:
        lines += [f"port = {broker.port}", "allow_plaintext = true"]
    # the consent gate has its own tests (test_consent_gate.py); here its fetches would take the
    # server's injected faults meant for the writes
    bridge.setdefault("check_consent", False)
    bridge.setdefault("retry_base", 0.2)
    bridge.setdefault("retry_max", 2.0)
    bridge.setdefault("linger", 0.05)
    for key, value in bridge.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    lines += [
        "",
        "[[destinations]]",
        'type = "fhir"',
        'name = "record"',
        f'base_url = "{server.base_url}"',
        f'ca_file = "{server.ca_file}"',
        f"bundle_size = {bundle_size}",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def running(config: Path, **options: Any) -> AsyncIterator[Bridge]:
    """A bridge in this process (counters visible), subscribed; stopped on exit."""
    bridge = build_bridge(load_bridge_config(config, **options))
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        async with asyncio.timeout(10):
            await bridge.subscribed.wait()
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class BridgeProcess:
    """``edge bridge --config ...`` in its own process, its log in a file."""

    def __init__(self, config: Path, log: Path, *extra: str) -> None:
        self.config, self.log, self.extra = config, log, extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*EDGE, "bridge", "--config", str(self.config), *self.extra],
                cwd=self.config.parent,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def since_start(self) -> str:
        return self.text()[self._offset :]

    async def wait_for(self, needle: str, timeout: float = 20.0) -> None:
        def seen() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited {self.proc.returncode}:\n{self.text()}")
            return needle in self.since_start()

        await eventually(seen, timeout, what=f"{needle!r} in {self.log.name}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"bridge ignored SIGTERM:\n{self.text()}") from None
        return self.proc.returncode

    def delivered(self) -> int:
        """Readings written, from the "stopped: ..." lines of every run of this process."""
        total = 0
        for line in self.text().splitlines():
            if " stopped: " in line:
                part = line.split(" stopped: ", 1)[1]
                total += int(part.split(" delivered")[0].rsplit(", ", 1)[1])
        return total
