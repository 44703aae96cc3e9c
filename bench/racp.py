"""Glucose record download over RACP, against raw bumble notifications of the same bytes.

(a) pipeline: a full ``GlucoseDriver`` session with an emulated GLS meter holding N stored records,
    every one with a context (so 2N notifications): connect, discover, pair Just Works, count,
    Report Stored Records, decode, join each measurement with its context, deliver ``Reading``s to
    an in-memory sink (no database: that is bench.ingest's job). Timed from the driver's Report
    Stored Records write to the last reading delivered (the download); the whole session (connect
    to disconnect, no scan) is shown too;
(b) raw: the very bytes the meter holds (each record's measurement, then its context) notified by
    a plain bumble peripheral to a plain bumble central subscriber, started by a write as RACP is,
    and timed until the last notification arrives: no RACP, no decoding, no driver, no pairing
    (bumble's virtual controller only flags a link encrypted: it costs no packet any work).
Both run on the same in-process ``LocalLink`` (a fresh one each round), where the "radio" costs
nothing and both host stacks share one CPU: (b) is what bumble itself costs for those bytes, so
(a)/(b) is the share of the link's throughput the gateway keeps. The issue's target is >= 0.6.
Machines here are noisy, so rounds are interleaved (and their order alternated) and medians
reported; read the ratio. ``--profile`` adds a cProfile of one download, for where time goes.

    python -m bench.racp [--records 1000] [--rounds 5] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bumble import core, hci
from bumble.controller import Controller
from bumble.device import Connection, Device, Peer
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from drivers import uuids
from drivers.codecs.errors import DecodeError
from drivers.codecs.racp import OpCode
from drivers.glucose import GlucoseDriver
from drivers.models import DeviceIdentity, Reading
from drivers.session import SessionSummary
from firmware_profiles import EmulatedReading, FirmwareProfile, load_profiles
from gateway.emulator import EmulatedDevice
from gateway.link import Advertisement, GattConnection, PairingPolicy
from gateway.link.bumble_link import BumbleLink, new_local_link

PROFILES = load_profiles()
METER = PROFILES["generic-gls"]
RAW_PERIPHERAL = "C0:ED:6E:00:01:01"  # static random, as the meter's
RAW_CENTRAL = "F0:ED:6E:00:01:02"  # public, as the gateway's
_RAW_SERVICE = "7E5A0000-0000-4000-8000-00000000ED6E"  # a vendor service: nothing standard
_RAW_TRIGGER = "7E5A0001-0000-4000-8000-00000000ED6E"


# -- the meter ---------------------------------------------------------------------------------
def stored_records(n: int) -> list[EmulatedReading]:
    """``n`` mg/dL records 7 minutes apart, every one with a meal, tester and health context."""
    start = datetime(2026, 1, 1, 6, 0, 0)
    return [
        EmulatedReading(
            glucose=Decimal(70 + i % 180),
            time=(start + timedelta(minutes=7 * i)).isoformat(),
            meal=1 + i % 5,
            tester=1 + i % 3,
            health=1 + i % 5,
        )
        for i in range(n)
    ]


def meter_profile(n: int) -> FirmwareProfile:
    """generic-gls holding ``n`` records with context, none lost on the air."""
    data = METER.model_dump()
    data["id"] = f"bench-gls-{n}"
    data["emulation"]["stored"] = [r.model_dump(exclude_defaults=True) for r in stored_records(n)]
    data["emulation"]["lose_once"] = []
    return FirmwareProfile.model_validate(data)


class Sink:
    """The daemon's side of the driver contract, in memory; notes when each reading arrives."""

    def __init__(self, profiler: cProfile.Profile | None = None, expected: int = 0) -> None:
        self.readings: list[Reading] = []
        self.last_at = 0.0
        self.profiler, self.expected = profiler, expected
        self.malformed: list[DecodeError] = []
        self.cursors: dict[tuple[str, str], int] = {}

    async def on_reading(self, reading: Reading) -> None:
        await self.on_readings([reading])

    async def on_readings(self, readings: Sequence[Reading]) -> None:
        self.readings.extend(readings)
        self.last_at = time.perf_counter()
        if self.profiler is not None and len(self.readings) >= self.expected:
            self.profiler.disable()

    async def on_malformed(
        self, device: DeviceIdentity, characteristic: str, payload: bytes, error: DecodeError
    ) -> None:
        self.malformed.append(error)

    async def load_cursor(self, device: DeviceIdentity, stream: str) -> int | None:
        return self.cursors.get((device.key, stream))

    async def save_cursor(self, device: DeviceIdentity, stream: str, value: int) -> None:
        self.cursors[(device.key, stream)] = value


class TimedLink(BumbleLink):
    """The gateway's link, noting when the driver writes its first Report Stored Records."""

    requested_at: float | None = None
    profiler: cProfile.Profile | None = None  # started with the download

    async def connect(self, address: str, timeout: float = 10.0) -> GattConnection:
        connection = await super().connect(address, timeout)
        write = connection.write

        async def timed_write(uuid: str, data: bytes, *, response: bool = True) -> None:
            report = data[:1] == bytes([OpCode.REPORT_STORED_RECORDS])
            if self.requested_at is None and uuid == uuids.RECORD_ACCESS_CONTROL_POINT and report:
                self.requested_at = time.perf_counter()
                if self.profiler is not None:
                    self.profiler.enable()
            await write(uuid, data, response=response)

        connection.write = timed_write  # type: ignore[method-assign]
        return connection


@dataclass(slots=True)
class Download:
    records: int  # readings delivered
    download: float  # seconds, Report Stored Records write -> last reading delivered
    session: float  # seconds, connect -> disconnect
    readings: list[Reading] = field(repr=False)
    summary: SessionSummary = field(repr=False)


async def run_pipeline(
    radio: LocalLink,
    profile: FirmwareProfile,
    bonds: Path,
    profiler: cProfile.Profile | None = None,
) -> Download:
    """One GlucoseDriver session downloading every record of a fresh meter (so it pairs)."""
    meter = EmulatedDevice(profile)
    link = TimedLink(local_link=radio, pairing=PairingPolicy(bonds=bonds))
    link.profiler = profiler
    await meter.attach(radio)
    await link.open()
    try:
        ad = Advertisement(
            address=meter.address,
            name=profile.device.name,
            service_uuids=(GlucoseDriver.SERVICE,),
        )  # no scan: it is a fixed sleep, not link throughput
        driver = GlucoseDriver(profiles=PROFILES, zone=UTC, idle_timeout=1.0)
        sink = Sink(profiler, meter.total)
        start = time.perf_counter()
        summary = await driver.run(link, ad, sink)
        elapsed = time.perf_counter() - start
        assert link.requested_at is not None, "the driver never asked for the records"
        if meter.pairings != 1:
            raise RuntimeError(f"expected one Just Works pairing, saw {meter.pairings}")
        return Download(
            len(sink.readings), sink.last_at - link.requested_at, elapsed, sink.readings, summary
        )
    finally:
        await link.close()
        await meter.detach()


# -- the raw baseline --------------------------------------------------------------------------
def _controller(radio: LocalLink, name: str, address: str) -> tuple[Controller, Device]:
    controller = Controller(name, link=radio, public_address=address)
    host = Host(controller, AsyncPipeSink(controller))
    return controller, Device(name=name, address=hci.Address(address), host=host)


class RawPair:
    """A plain bumble peripheral notifying fixed values to a plain bumble central."""

    def __init__(self, radio: LocalLink, values: list[tuple[bytes, bytes | None]]) -> None:
        self.radio = radio
        self.values = values
        self.expected = sum(1 if c is None else 2 for _, c in values)
        self.received: list[bytes] = []
        self.done = asyncio.Event()
        self._controllers: list[Controller] = []
        self._devices: list[Device] = []
        self._tasks: set[asyncio.Task[None]] = set()
        first = Characteristic(
            core.UUID.from_16_bits(int(uuids.GLUCOSE_MEASUREMENT, 16)),
            Characteristic.Properties.NOTIFY,
            Characteristic.READABLE,
            b"",
        )
        second = Characteristic(
            core.UUID.from_16_bits(int(uuids.GLUCOSE_MEASUREMENT_CONTEXT, 16)),
            Characteristic.Properties.NOTIFY,
            Characteristic.READABLE,
            b"",
        )
        trigger: Characteristic[bytes] = Characteristic(
            core.UUID(_RAW_TRIGGER),
            Characteristic.Properties.WRITE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self._on_trigger),
        )
        self._characteristics = (first, second, trigger)

    async def open(self) -> None:
        p_controller, peripheral = _controller(self.radio, "bench-raw-peripheral", RAW_PERIPHERAL)
        c_controller, central = _controller(self.radio, "bench-raw-central", RAW_CENTRAL)
        self._controllers = [p_controller, c_controller]
        self._devices = [peripheral, central]
        peripheral.add_service(Service(core.UUID(_RAW_SERVICE), list(self._characteristics)))
        self._peripheral = peripheral
        await peripheral.power_on()
        await central.power_on()
        await peripheral.start_advertising(advertising_interval_min=20, advertising_interval_max=20)
        connection = await central.connect(
            hci.Address(RAW_PERIPHERAL, hci.Address.RANDOM_DEVICE_ADDRESS), timeout=10.0
        )
        peer = Peer(connection)
        await peer.discover_services()
        for service in peer.services:
            await peer.discover_characteristics(service=service)
            for characteristic in service.characteristics:
                await peer.discover_descriptors(characteristic=characteristic)
        first, second, trigger = (
            peer.get_characteristics_by_uuid(c.uuid)[0] for c in self._characteristics
        )
        await peer.subscribe(first, self._on_value)
        await peer.subscribe(second, self._on_value)
        self._peer, self._trigger = peer, trigger

    def _on_value(self, value: bytes) -> None:
        self.received.append(value)
        if len(self.received) == self.expected:
            self.done.set()

    def _on_trigger(self, connection: Connection, _value: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._send(connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, connection: Connection) -> None:
        device, (first, second, _) = self._peripheral, self._characteristics
        for measurement, context in self.values:
            await device.notify_subscriber(connection, first, measurement)
            if context is not None:
                await device.notify_subscriber(connection, second, context)

    async def run(self, profiler: cProfile.Profile | None = None) -> float:
        """Seconds from the trigger write to the last notification received."""
        self.received.clear()
        self.done.clear()
        if profiler is not None:
            profiler.enable()
        start = time.perf_counter()
        await self._peer.write_value(self._trigger, b"\x01", with_response=True)
        await asyncio.wait_for(self.done.wait(), 60.0)
        elapsed = time.perf_counter() - start
        if profiler is not None:
            profiler.disable()
        return elapsed

    async def close(self) -> None:
        for device in self._devices:
            with contextlib.suppress(Exception):  # teardown
                await asyncio.wait_for(device.power_off(), 2.0)
        for controller in self._controllers:
            self.radio.remove_controller(controller)


def raw_values(profile: FirmwareProfile) -> list[tuple[bytes, bytes | None]]:
    """What the meter notifies for each record, in order: the bytes of (a), byte for byte."""
    memory = EmulatedDevice(profile).memory
    assert memory is not None
    return [(r.measurement, r.context) for _, r in sorted(memory.records.items())]


# -- checks and rounds -------------------------------------------------------------------------
def check_download(result: Download, values: list[tuple[bytes, bytes | None]]) -> None:
    """Every record delivered once, in order, with its own measurement bytes and context."""
    sequences = [r.sequence for r in result.readings]
    if sequences != list(range(len(values))):
        raise AssertionError(f"incomplete download: {len(sequences)} of {len(values)} records")
    for reading, (measurement, _context) in zip(result.readings, values, strict=True):
        context = {key for key, _ in reading.context}
        if reading.raw != measurement.hex() or not context >= {"meal", "tester", "health"}:
            raise AssertionError(f"record {reading.sequence} differs from what the meter holds")
    if result.summary.malformed or result.summary.skipped:
        raise AssertionError("malformed or skipped records in a clean download")


def check_raw(pair: RawPair) -> None:
    sent = [v for m, c in pair.values for v in (m, c) if v is not None]
    if pair.received != sent:
        raise AssertionError(f"raw: {len(pair.received)} of {len(sent)} notifications, or altered")


async def one_round(
    profile: FirmwareProfile, values: list[tuple[bytes, bytes | None]], raw_first: bool
) -> tuple[Download, float]:
    """(a) and (b) once each, on one fresh LocalLink, in the order given."""
    radio = new_local_link()
    pair = RawPair(radio, values)
    await pair.open()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if raw_first:
                raw = await pair.run()
            download = await run_pipeline(radio, profile, Path(tmp) / "bonds.json")
            if not raw_first:
                raw = await pair.run()
        check_download(download, values)
        check_raw(pair)
        return download, raw
    finally:
        await pair.close()


_AREAS = (  # where a profiled function lives, by path
    ("bumble/colors.py", "bumble: debug-log strings"),
    ("bumble/", "bumble"),
    ("pyee/", "bumble"),  # bumble's event emitter
    ("asyncio/", "asyncio event loop"),
    ("/drivers/codecs/", "drivers.codecs (decode)"),
    ("/drivers/", "drivers (glucose driver, session)"),
    ("/gateway/link/", "gateway.link (bumble_link)"),
    ("/gateway/emulator/", "gateway.emulator (the meter)"),
)
# bumble formats every HCI/ATT packet for logger.debug eagerly (f-strings), logging on or off
_DEBUG_STRINGS = {"__str__", "__repr__", "format_fields", "stringify_field", "format_field_value"}


def _area(path: str, function: str) -> str:
    for fragment, name in _AREAS:
        if fragment in path:
            if name == "bumble" and function in _DEBUG_STRINGS:
                return "bumble: debug-log strings"
            return name
    return "builtins / stdlib / other"


def profile_report(pipeline: cProfile.Profile, raw: cProfile.Profile, top: int) -> str:
    """Own time by area for (a) and (b), then (a)'s costliest project functions."""
    areas: dict[str, list[float]] = {}
    for column, profiler in enumerate((pipeline, raw)):
        entries: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        for (path, _line, function), (_cc, _nc, tottime, _ct, _callers) in entries.items():
            areas.setdefault(_area(path, function), [0.0, 0.0])[column] += tottime
    totals = [sum(v[i] for v in areas.values()) for i in (0, 1)]
    lines = [
        "cProfile, own time by area (profiler overhead inflates Python-heavy code):",
        f"  {'area':<36} {'(a) download':>13} {'(b) raw':>9}",
    ]
    for name, (a, b) in sorted(areas.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"  {name:<36} {a * 1000:>10.1f} ms {b * 1000:>6.1f} ms")
    lines.append(f"  {'total':<36} {totals[0] * 1000:>10.1f} ms {totals[1] * 1000:>6.1f} ms")
    out = io.StringIO()
    stats = pstats.Stats(pipeline, stream=out)
    stats.sort_stats("tottime").print_stats(r"/drivers/|/gateway/", top)
    body = out.getvalue()
    lines.append("(a)'s costliest project functions:")
    lines.append(body[body.index("   ncalls") :] if "   ncalls" in body else body)
    return "\n".join(lines)


async def profile_round(
    profile: FirmwareProfile, values: list[tuple[bytes, bytes | None]], top: int
) -> str:
    """One more round of (a) and (b), each profiled over its timed window only."""
    radio = new_local_link()
    pair = RawPair(radio, values)
    await pair.open()
    pipeline, raw = cProfile.Profile(), cProfile.Profile()
    try:
        await pair.run(raw)
        with tempfile.TemporaryDirectory() as tmp:
            download = await run_pipeline(radio, profile, Path(tmp) / "bonds.json", pipeline)
        check_download(download, values)
        check_raw(pair)
    finally:
        await pair.close()
    return profile_report(pipeline, raw, top)


async def main(records: int, rounds: int, profile: bool) -> None:
    meter = meter_profile(records)
    values = raw_values(meter)
    notifications = sum(1 if c is None else 2 for _, c in values)
    size = sum(len(m) + len(c or b"") for m, c in values)
    print(
        f"{records} stored glucose records with context ({notifications} notifications,"
        f" {size} value bytes) per run, {rounds} interleaved rounds, medians"
    )
    rates: dict[str, list[float]] = {"download": [], "session": [], "raw": [], "ratio": []}
    for i in range(rounds):
        download, raw = await one_round(meter, values, raw_first=i % 2 == 0)
        rates["download"].append(records / download.download)
        rates["session"].append(records / download.session)
        rates["raw"].append(records / raw)
        rates["ratio"].append(raw / download.download)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["download"] / med["raw"]
    print(
        f"pipeline download (RACP request -> last reading delivered) {med['download']:>6.0f}"
        " records/s"
    )
    print(
        f"pipeline whole session (connect, pair, count, download, disconnect; no scan)"
        f" {med['session']:>6.0f} records/s"
    )
    print(
        f"raw bumble notifications (trigger write -> last one received) {med['raw']:>6.0f}"
        " records/s"
    )
    print(
        f"download/raw = {ratio:.2f} (target >= 0.6: {'met' if ratio >= 0.6 else 'NOT met'})"
        f" | median of per-round ratios {med['ratio']:.2f}"
        f" [{min(rates['ratio']):.2f} .. {max(rates['ratio']):.2f}]"
    )
    if profile:
        print(await profile_round(meter, values, 20))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one download after")
    args = parser.parse_args()
    asyncio.run(main(args.records, args.rounds, args.profile))
