"""Outbox drain throughput: the daemon's own drain loop to MQTT and to FHIR, against baselines.

(a) MQTT: N readings in a real outbox drained to a private mosquitto by ``Daemon.drain_loop``
    (lease a batch of ``outbox.batch`` = 20, consent check, ``MqttUplink.send`` at QoS 1 with
    every PUBACK awaited, ``settle`` in one durable transaction, then the next batch) against raw
    paho: one plain paho MQTT 5 client (its network thread, ``loop_start``, the same inflight
    window of 20) publishing the very bytes the outbox holds (same topic, same payloads, same
    MQTT 5 properties) at QoS 1 to the same broker and waiting for every PUBACK. No outbox, no
    asyncio, no SQLite on that side: drain/raw is the share of the broker link the gateway keeps.
(b) FHIR: the same readings drained by the same loop to a real FHIR server (Medplum in node, over
    TLS, validating every resource it writes) in transaction bundles of ``bundle_size`` readings
    (20, the default) against one reading per request (``bundle_size`` = 1); the server is
    emptied (``FhirServer.reset()``) before each run.
Readings are weight-scale indications decoded and mapped by the real code (weight, height and
BMI: three Observations each, or one with ``--weight-only``) and stored by ``Daemon.on_readings``
in a fresh outbox file in a temp dir (untimed; the outbox keeps WAL + synchronous=FULL on that
disk). A run is timed from the start of the drain loop to the settle of its last reading, then
checked: every envelope done, nothing retried or rejected, the FHIR server holding every
Observation. CPU per reading is shown too (this process: event loop, paho and aiosqlite threads;
the peer: mosquitto or node), as this machine's 2 cores are shared.

Brokers and servers come from the test helpers ``tests.support.mosquitto.MosquittoBroker`` and
``tests.support.fhir_server.FhirServer`` (so this needs mosquitto, and node with the pinned
Medplum packages: ``make test-deps``); the broker runs mosquitto's defaults unless
``--tcp-nodelay``. ``--drain-loops K`` runs K drain loops on the one outbox (an experiment: the
daemon runs one per destination). Machines here are noisy: rounds are interleaved, their order
alternated, medians reported; read the ratios. ``--profile`` adds a cProfile (event-loop thread)
of one pipeline drain per part.

    python -m bench.drain [--readings 500] [--fhir-readings 200] [--rounds 5] [--only mqtt|fhir]
                          [--weight-only] [--tcp-nodelay] [--drain-loops 1] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.ingest import DEVICE, PATIENT, ZONE, payloads
from drivers.codecs.weight_scale import WeightMeasurement
from drivers.models import Reading
from drivers.session import Value
from drivers.weight_scale import reading_from_measurement
from firmware_profiles import ClockPolicy
from gateway.config import Config, parse_config
from gateway.daemon import Daemon, DeliveryEvent, Event
from gateway.uplinks.mqtt import CONTENT_TYPE, IDENTIFIER_PROPERTY, MqttUplink
from tests.support.fhir_server import FhirServer
from tests.support.mosquitto import MosquittoBroker

GATEWAY_ID = "02A1B2C3D4E5F601"  # written into each data dir: the same bytes in every run
MQTT_WINDOW = 20  # MqttUplink's default max_inflight; the raw client gets the same
TIMEOUT = 600.0  # seconds for one run, a hang guard only
MQTT_TARGET, FHIR_TARGET = 0.7, 5.0


class BenchError(RuntimeError):
    """A run did not deliver every reading exactly as expected: its time means nothing."""


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    cpu: float  # CPU seconds of this process (all its threads) over the run
    peer_cpu: float | None  # CPU seconds of the broker / FHIR server process, when known


def _peer_cpu(pid: int | None) -> float | None:
    """utime + stime of a process (Linux /proc), None elsewhere."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


# -- readings and the gateway ------------------------------------------------------------------
def make_readings(n: int, *, full: bool = True) -> list[Reading]:
    """``n`` weight-scale readings as the driver makes them from the scale's indications."""
    received = datetime(2026, 1, 2, 8, 0, 0, tzinfo=UTC)
    return [
        reading_from_measurement(
            WeightMeasurement.decode(payload),
            Value(
                payload=payload,
                device=DEVICE,
                received_at=received,
                policy=ClockPolicy.LOCAL,
                zone=ZONE,
            ),
        )
        for payload in payloads(n, full=full)
    ]


def gateway_config(data_dir: Path, destination: dict[str, Any]) -> Config:
    """One destination, the scale bound to the patient; the link is never opened."""
    return parse_config(
        {
            "gateway": {"data_dir": str(data_dir), "timezone": "UTC"},
            "link": {"backend": "bumble", "transport": "tcp-client:127.0.0.1:9"},
            "bindings": [{"device": DEVICE.system_id, "user_index": 1, "patient": str(PATIENT)}],
            "destinations": [destination],
        }
    )


@dataclass(slots=True)
class Tally:
    """What the drain loop reported, and when the expected count was reached."""

    expected: int
    delivered: int = 0
    retried: int = 0
    rejected: int = 0
    done_at: float = 0.0
    cpu_at: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def on_event(self, event: Event) -> None:
        if not isinstance(event, DeliveryEvent):
            return
        self.delivered += event.delivered
        self.retried += event.retried
        self.rejected += event.rejected
        if self.retried or self.rejected or self.delivered >= self.expected:
            self.done_at, self.cpu_at = time.perf_counter(), time.process_time()
            self.done.set()


def _gateway_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "gateway-id").write_text(GATEWAY_ID + "\n", encoding="ascii")


async def loaded_daemon(
    data_dir: Path, destination: dict[str, Any], readings: Sequence[Reading]
) -> tuple[Daemon, Tally]:
    """A daemon whose outbox holds ``readings`` for ``destination``, consent granted (untimed)."""
    _gateway_dir(data_dir)
    tally = Tally(len(readings))
    daemon = Daemon(gateway_config(data_dir, destination), on_event=tally.on_event)
    daemon.consent.grant(str(PATIENT), destination["name"], "vital-signs", recorded_by="bench")
    await daemon.outbox.open()
    await daemon.on_readings(readings)
    status = await daemon.outbox.status()
    if status.by_destination != {destination["name"]: {"pending": len(readings)}}:
        raise BenchError(f"ingest: unexpected outbox state {status.by_destination}")
    return daemon, tally


async def close_daemon(daemon: Daemon) -> None:
    for uplink in daemon.uplinks.values():
        await uplink.close()
    await daemon.outbox.close()
    daemon.consent.close()


async def drain(
    daemon: Daemon,
    tally: Tally,
    name: str,
    *,
    peer: int | None = None,
    loops: int = 1,
    profiler: cProfile.Profile | None = None,
) -> Run:
    """``Daemon.drain_loop`` (``loops`` of them) until every reading is delivered and settled."""
    stop = asyncio.Event()
    peer_before = _peer_cpu(peer)
    if profiler is not None:
        profiler.enable()
    start, cpu = time.perf_counter(), time.process_time()
    tasks = [
        asyncio.create_task(daemon.drain_loop(name, stop), name=f"bench-drain-{name}-{i}")
        for i in range(loops)
    ]
    try:
        await asyncio.wait_for(tally.done.wait(), TIMEOUT)
    finally:
        if profiler is not None:
            profiler.disable()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30.0)
    peer_after = _peer_cpu(peer)
    if tally.retried or tally.rejected or tally.delivered != tally.expected:
        raise BenchError(
            f"{name}: {tally.delivered} delivered, {tally.retried} retried,"
            f" {tally.rejected} rejected of {tally.expected}"
        )
    status = await daemon.outbox.status()
    if status.by_destination != {name: {"done": tally.expected}}:
        raise BenchError(f"{name}: outbox not drained: {status.by_destination}")
    return Run(tally.done_at - start, tally.cpu_at - cpu, _delta(peer_after, peer_before))


# -- (a) MQTT ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    body: bytes
    identifier: str


async def outbox_messages(daemon: Daemon, name: str) -> list[Message]:
    """What the uplink will publish for each pending envelope, in lease order: the raw side's
    bytes, taken from the outbox itself."""
    uplink = daemon.uplinks[name]
    assert isinstance(uplink, MqttUplink)
    rows = await daemon.outbox.stored_envelopes(name)  # decrypted: what the uplink is handed
    return [Message(uplink.topic_for(kind), body, key) for key, body, kind in rows]


def mqtt_destination(broker: MosquittoBroker, client_id: str) -> dict[str, Any]:
    return {
        "type": "mqtt",
        "name": "broker",
        "host": broker.host,
        "port": broker.port,
        "client_id": client_id,
        "allow_plaintext": True,
        # no consumer on the bench broker, for either side: its PUBACK 0x10 ("no matching
        # subscribers") is taken as delivered, as the raw client takes it
        "require_subscriber": False,
    }


async def mqtt_pipeline(
    broker: MosquittoBroker,
    daemon: Daemon,
    tally: Tally,
    *,
    loops: int = 1,
    profiler: cProfile.Profile | None = None,
) -> Run:
    uplink = daemon.uplinks["broker"]
    assert isinstance(uplink, MqttUplink)
    await uplink.start()
    await asyncio.wait_for(uplink.wait_connected(), 10.0)
    return await drain(daemon, tally, "broker", peer=broker.pid, loops=loops, profiler=profiler)


def mqtt_raw(broker: MosquittoBroker, messages: Sequence[Message], client_id: str) -> Run:
    """A plain paho client publishing ``messages`` at QoS 1 until every PUBACK is in."""
    acked: list[int] = []
    failed: list[int] = []
    connected, finished = threading.Event(), threading.Event()

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            connected.set()

    def on_publish(_c: mqtt.Client, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
        (failed if int(reason.value) >= 0x80 else acked).append(1)
        if len(acked) + len(failed) == len(messages):
            finished.set()

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(MQTT_WINDOW)
    client.on_connect = on_connect
    client.on_publish = on_publish
    connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    connect.SessionExpiryInterval = 86_400  # as MqttUplink
    client.connect_async(
        broker.host, broker.port, keepalive=30, clean_start=False, properties=connect
    )
    client.loop_start()
    try:
        if not connected.wait(10.0):
            raise BenchError("raw paho client did not connect")
        peer_before = _peer_cpu(broker.pid)
        start, cpu = time.perf_counter(), time.process_time()
        for message in messages:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = CONTENT_TYPE
            props.PayloadFormatIndicator = 1
            props.UserProperty = [(IDENTIFIER_PROPERTY, message.identifier)]
            info = client.publish(message.topic, message.body, qos=1, properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BenchError(f"raw publish failed: {mqtt.error_string(info.rc)}")
        if not finished.wait(TIMEOUT):
            raise BenchError(f"raw: {len(acked)} PUBACKs of {len(messages)}")
        run = Run(
            time.perf_counter() - start,
            time.process_time() - cpu,
            _delta(_peer_cpu(broker.pid), peer_before),
        )
    finally:
        client.disconnect()
        client.loop_stop()
    if failed or len(acked) != len(messages):
        raise BenchError(f"raw: {len(acked)} good PUBACKs, {len(failed)} failed")
    return run


async def mqtt_round(
    broker: MosquittoBroker,
    readings: Sequence[Reading],
    raw_first: bool,
    *,
    loops: int = 1,
    data_dir: Path | None = None,
) -> tuple[Run, Run]:
    """(a) once and its raw baseline once, on the same broker: (pipeline, raw). The outbox is
    kept in ``data_dir`` when given (a temp dir otherwise)."""
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        destination = mqtt_destination(broker, f"bench-gw-{tag}")
        daemon, tally = await loaded_daemon(data_dir or Path(tmp), destination, readings)
        try:
            messages = await outbox_messages(daemon, "broker")
            if raw_first:
                raw = await asyncio.to_thread(mqtt_raw, broker, messages, f"bench-raw-{tag}")
            pipeline = await mqtt_pipeline(broker, daemon, tally, loops=loops)
            if not raw_first:
                raw = await asyncio.to_thread(mqtt_raw, broker, messages, f"bench-raw-{tag}")
        finally:
            await close_daemon(daemon)
    return pipeline, raw


# -- (b) FHIR ----------------------------------------------------------------------------------
def fhir_destination(server: FhirServer, bundle_size: int) -> dict[str, Any]:
    return {
        "type": "fhir",
        "name": "fhir",
        "base_url": server.base_url,
        "ca_file": server.ca_file,
        "bundle_size": bundle_size,
    }


def observation_count(server: FhirServer) -> int:
    return int(server.get("Observation?_summary=count")["total"])


def _server_pid(server: FhirServer) -> int | None:
    process = getattr(server, "_process", None)  # the helper has no public pid
    return getattr(process, "pid", None)


async def fhir_run(
    server: FhirServer,
    readings: Sequence[Reading],
    bundle_size: int,
    *,
    loops: int = 1,
    data_dir: Path | None = None,
    profiler: cProfile.Profile | None = None,
) -> Run:
    """Drain ``readings`` to the emptied server in bundles of ``bundle_size``; check the server
    holds every Observation. The outbox is kept in ``data_dir`` when given."""
    await asyncio.to_thread(server.reset)
    with tempfile.TemporaryDirectory() as tmp:
        destination = fhir_destination(server, bundle_size)
        daemon, tally = await loaded_daemon(data_dir or Path(tmp), destination, readings)
        try:
            await daemon.uplinks["fhir"].start()
            run = await drain(
                daemon, tally, "fhir", peer=_server_pid(server), loops=loops, profiler=profiler
            )
        finally:
            await close_daemon(daemon)
    expected = sum(len(r.quantities) for r in readings)  # one Observation per quantity
    found = await asyncio.to_thread(observation_count, server)
    if found != expected:
        raise BenchError(f"fhir: the server holds {found} Observations, expected {expected}")
    return run


async def fhir_round(
    server: FhirServer,
    readings: Sequence[Reading],
    bundle_size: int,
    single_first: bool,
    *,
    loops: int = 1,
) -> tuple[Run, Run]:
    """(b) once each way on the same server: (bundled, one reading per request)."""
    if single_first:
        single = await fhir_run(server, readings, 1, loops=loops)
    bundled = await fhir_run(server, readings, bundle_size, loops=loops)
    if not single_first:
        single = await fhir_run(server, readings, 1, loops=loops)
    return bundled, single


# -- report ------------------------------------------------------------------------------------
@dataclass(slots=True)
class Side:
    """One side's runs: medians of readings/s and of CPU ms per reading."""

    readings: int
    runs: list[Run] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(self.readings / r.seconds for r in self.runs)

    def cpu_text(self, peer: str) -> str:
        own = statistics.median(r.cpu for r in self.runs) * 1000 / self.readings
        peers = [r.peer_cpu for r in self.runs if r.peer_cpu is not None]
        text = f"cpu/reading: gateway {own:.2f} ms"
        if peers:
            text += f", {peer} {statistics.median(peers) * 1000 / self.readings:.2f} ms"
        return text


def _verdict(name: str, ratio: float, target: float, per_round: list[float]) -> str:
    met = "met" if ratio >= target else "NOT met"
    return (
        f"{name} = {ratio:.2f}x (target >= {target:g}: {met})"
        f" | per-round ratios median {statistics.median(per_round):.2f}"
        f" [{min(per_round):.2f} .. {max(per_round):.2f}]"
    )


def _profile_text(profiler: cProfile.Profile, title: str, top: int) -> str:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    body = out.getvalue()
    return f"{title}\n" + (body[body.index("   ncalls") :] if "   ncalls" in body else body)


async def mqtt_part(
    broker: MosquittoBroker,
    readings: list[Reading],
    rounds: int,
    *,
    loops: int = 1,
    profile: bool = False,
) -> float:
    """(a)'s rounds on ``broker``, printed; returns drain/raw (medians)."""
    n = len(readings)
    pipeline, raw, per_round = Side(n), Side(n), []
    for i in range(rounds):
        p, r = await mqtt_round(broker, readings, raw_first=i % 2 == 0, loops=loops)
        pipeline.runs.append(p)
        raw.runs.append(r)
        per_round.append(r.seconds / p.seconds)
    ratio = pipeline.rate / raw.rate
    how = f"{loops} drain loops" if loops > 1 else "Daemon.drain_loop"
    print(
        f"(a) outbox -> mosquitto QoS 1 ({how}, batches of 20): {pipeline.rate:>7.0f} readings/s"
        f" | {pipeline.cpu_text('broker')}"
    )
    print(
        f"    raw paho QoS 1, same bytes, every PUBACK awaited: {raw.rate:>7.0f} readings/s"
        f" | {raw.cpu_text('broker')}"
    )
    print("    " + _verdict("(a) drain/raw", ratio, MQTT_TARGET, per_round))
    if profile:
        profiler = cProfile.Profile()
        with tempfile.TemporaryDirectory() as tmp:
            destination = mqtt_destination(broker, f"bench-gw-{uuid.uuid4().hex[:8]}")
            daemon, tally = await loaded_daemon(Path(tmp), destination, readings)
            try:
                await mqtt_pipeline(broker, daemon, tally, loops=loops, profiler=profiler)
            finally:
                await close_daemon(daemon)
        print(_profile_text(profiler, "(a) one drain, event-loop thread, by own time:", 20))
    return ratio


async def fhir_part(
    server: FhirServer,
    readings: list[Reading],
    rounds: int,
    bundle_size: int = 20,
    *,
    loops: int = 1,
    profile: bool = False,
) -> float:
    """(b)'s rounds on ``server``, printed; returns bundled/single (medians)."""
    n = len(readings)
    bundled, single, per_round = Side(n), Side(n), []
    for i in range(rounds):
        b, s = await fhir_round(server, readings, bundle_size, i % 2 == 0, loops=loops)
        bundled.runs.append(b)
        single.runs.append(s)
        per_round.append(s.seconds / b.seconds)
    ratio = bundled.rate / single.rate
    print(
        f"(b) outbox -> FHIR server, bundles of {bundle_size:>2} readings: {bundled.rate:>7.1f}"
        f" readings/s | {bundled.cpu_text('server')}"
    )
    print(
        f"    one reading per request (bundle_size 1): {single.rate:>7.1f} readings/s"
        f" | {single.cpu_text('server')}"
    )
    print("    " + _verdict("(b) bundled/single", ratio, FHIR_TARGET, per_round))
    if profile:
        for size in (bundle_size, 1):
            profiler = cProfile.Profile()
            await fhir_run(server, readings, size, loops=loops, profiler=profiler)
            print(_profile_text(profiler, f"(b) bundle_size {size}, event-loop thread:", 12))
    return ratio


async def main(
    n: int,
    rounds: int,
    *,
    mqtt_side: bool = True,
    fhir_side: bool = True,
    full: bool = True,
    fhir_readings: int | None = None,
    bundle_size: int = 20,
    tcp_nodelay: bool = False,
    loops: int = 1,
    profile: bool = False,
    workdir: Path | None = None,
) -> dict[str, float]:
    """Start the broker / server, run the rounds, print the report; returns the ratios."""
    readings = make_readings(n, full=full)
    shape = "weight + height + BMI (3 Observations)" if full else "weight only (1 Observation)"
    print(f"readings of {shape}, {rounds} interleaved rounds, medians")
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        base = workdir or Path(scratch)
        if mqtt_side:
            extra = "set_tcp_nodelay true" if tcp_nodelay else ""
            nagle = "set_tcp_nodelay true" if tcp_nodelay else "defaults: Nagle on"
            print(f"(a) {n} readings a run; mosquitto {nagle}")
            with MosquittoBroker(base / "mosquitto", extra_config=extra) as broker:
                ratios["mqtt"] = await mqtt_part(
                    broker, readings, rounds, loops=loops, profile=profile
                )
        if fhir_side:
            chosen = readings if fhir_readings is None else make_readings(fhir_readings, full=full)
            print(f"(b) {len(chosen)} readings a run; Medplum server over TLS")
            server = FhirServer(base / "fhir-server")
            await asyncio.to_thread(server.start)
            try:
                ratios["fhir"] = await fhir_part(
                    server, chosen, rounds, bundle_size, loops=loops, profile=profile
                )
            finally:
                await asyncio.to_thread(server.stop)
    return ratios


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=500)
    parser.add_argument("--fhir-readings", type=int, default=200, help="readings for (b)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=("mqtt", "fhir"), help="run (a) mqtt or (b) fhir only")
    parser.add_argument("--bundle-size", type=int, default=20, help="(b)'s bundled side")
    parser.add_argument("--weight-only", action="store_true", help="readings without height/BMI")
    parser.add_argument("--tcp-nodelay", action="store_true", help="mosquitto set_tcp_nodelay")
    parser.add_argument("--drain-loops", type=int, default=1, help="concurrent drain loops")
    parser.add_argument("--profile", action="store_true", help="cProfile one drain of each part")
    args = parser.parse_args()
    asyncio.run(
        main(
            args.readings,
            args.rounds,
            mqtt_side=args.only != "fhir",
            fhir_side=args.only != "mqtt",
            full=not args.weight_only,
            fhir_readings=args.fhir_readings,
            bundle_size=args.bundle_size,
            tcp_nodelay=args.tcp_nodelay,
            loops=args.drain_loops,
            profile=args.profile,
        )
    )
