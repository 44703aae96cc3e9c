"""The pulse oximeter driver against emulated oximeters over bumble's virtual link.

Spot-checks are indicated and confirmed only once the sink stored them; the continuous stream is
notified and downsampled. Everything BLE is real (bumble host stacks on both sides); the sink is
the only test double, and every reading that comes out is mapped and validated as R4B FHIR.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from drivers.codecs.errors import DecodeError
from drivers.models import Absent, DeviceIdentity, Reading, TimeSource
from drivers.pulse_oximeter import PulseOximeterDriver
from drivers.session import SessionSummary
from firmware_profiles import FirmwareProfile, load_profiles
from gateway.emulator import EmulatedDevice
from gateway.link import PairingPolicy
from gateway.link.bumble_link import BumbleLink, new_local_link
from mappers.codes import PHD_BITS_ENUMERATION_OBSERVATION_PROFILE
from mappers.phd import map_reading
from tests.mappers.factories import GATEWAY, PATIENT, observations, validate_entries

PROFILES = load_profiles()
OXIMETER = PROFILES["generic-plx"]
QUESTIONABLE, INVALID, UNAVAILABLE, EARLY = 1 << 14, 1 << 15, 1 << 13, 1 << 6
LOW_PERFUSION, DISPLACED = 1 << 5, 1 << 13  # PLXS Device and Sensor Status bits


@dataclass
class Sink:
    """The daemon's side of the driver contract; ``fail_once`` device times are refused once
    (as if the gateway crashed before its commit), so their indications stay unconfirmed."""

    fail_once: set[datetime] = field(default_factory=set)
    readings: list[Reading] = field(default_factory=list)
    malformed: list[tuple[str, bytes]] = field(default_factory=list)
    attempts: list[datetime | None] = field(default_factory=list)

    async def on_reading(self, reading: Reading) -> None:
        self.attempts.append(reading.device_time)
        if reading.device_time in self.fail_once:
            self.fail_once.discard(reading.device_time)
            raise OSError("disk full")
        self.readings.append(reading)

    async def on_readings(self, readings: Sequence[Reading]) -> None:
        for reading in readings:
            await self.on_reading(reading)

    async def on_malformed(
        self, device: DeviceIdentity, characteristic: str, payload: bytes, error: DecodeError
    ) -> None:
        self.malformed.append((characteristic, payload))

    async def load_cursor(self, device: DeviceIdentity, stream: str) -> int | None:
        return None  # a PLXS oximeter has no record access

    async def save_cursor(self, device: DeviceIdentity, stream: str, value: int) -> None:
        raise AssertionError("a PLXS session never moves a cursor")

    def spot_checks(self) -> list[Reading]:
        return [r for r in self.readings if r.characteristic == "2A5E"]


def oximeter(*, stored: list[dict[str, Any]], live: list[dict[str, Any]]) -> FirmwareProfile:
    """The generic oximeter holding other readings, quick to hang up."""
    data = OXIMETER.model_dump()
    data["emulation"].update(stored=stored, live=live, live_interval=0.1, idle_disconnect=0.4)
    return FirmwareProfile.model_validate(data)


@asynccontextmanager
async def on_air(profile: FirmwareProfile) -> AsyncIterator[tuple[EmulatedDevice, BumbleLink]]:
    radio = new_local_link()
    device = EmulatedDevice(profile)
    gateway = BumbleLink(local_link=radio, pairing=PairingPolicy())
    await gateway.open()
    await device.attach(radio)
    try:
        yield device, gateway
    finally:
        await device.detach()
        await gateway.close()


async def session(
    gateway: BumbleLink,
    sink: Sink,
    *,
    period: float = 60.0,
    clock: Callable[[], datetime] | None = None,
) -> SessionSummary:
    (advertisement,) = await gateway.scan(0.3, [PulseOximeterDriver.SERVICE])
    driver = PulseOximeterDriver(
        profiles=PROFILES,
        zone=UTC,
        idle_timeout=1.0,
        continuous_period=period,
        **({"clock": clock} if clock else {}),
    )
    return await driver.run(gateway, advertisement, sink)


def values(reading: Reading) -> tuple[Decimal | Absent | None, ...]:
    return tuple(q.value if q.absent is None else q.absent for q in reading.quantities)


def fhir(reading: Reading) -> list[dict[str, Any]]:
    entries = map_reading(reading, PATIENT, GATEWAY)
    validate_entries(entries)
    return entries


async def test_stored_spot_checks_come_as_a_burst_then_live_ones_with_exact_values():
    async with on_air(OXIMETER) as (device, gateway):
        sink = Sink()
        summary = await session(gateway, sink)
        assert device.done.is_set() and device.acked == [0, 1, 2, 3, 4]
    first, second, live, last = sink.spot_checks()
    assert [values(r) for r in (first, second, live, last)] == [
        (Decimal("97"), Decimal("64")),
        (Decimal("95"), Decimal("71")),
        (Decimal("98"), Decimal("62")),
        (Decimal("97.5"), Decimal("63")),
    ]
    assert [q.unit for q in first.quantities] == ["%", "/min"]  # no pulse amplitude index
    assert first.device_time == datetime(2026, 11, 22, 7, 40)
    assert first.time_source is TimeSource.DEVICE_LOCAL and first.kind == "spo2"
    assert second.status == ("signal-low-perfusion",)
    # the burst arrives at once; live measurements come one live_interval (0.3 s) apart
    assert second.received_at - first.received_at < timedelta(seconds=0.25)
    assert live.received_at - second.received_at >= timedelta(seconds=0.25)
    (continuous,) = [r for r in sink.readings if r.characteristic == "2A5F"]
    assert values(continuous) == (Decimal("96"), Decimal("66"))
    assert continuous.device_time is None and continuous.time_source is TimeSource.GATEWAY_RECEIPT
    assert continuous.effective_time == continuous.received_at
    assert summary.readings == 5 and summary.skipped == 0 and summary.battery == 88
    assert summary.device is not None and summary.device.system_id == "001B2CFFFE3D4E6A"
    assert len({r.key for r in sink.readings}) == 5


async def test_every_reading_maps_to_valid_fhir_with_its_exact_values():
    async with on_air(OXIMETER) as (_device, gateway):
        sink = Sink()
        await session(gateway, sink)
    assert len(sink.readings) == 5
    for reading in sink.readings:
        saturation, pulse = observations(fhir(reading))[:2]
        assert saturation["code"]["coding"][0]["code"] == "150456"
        assert saturation["valueQuantity"]["value"] == reading.quantities[0].value
        assert pulse["code"]["coding"][0]["code"] == "149530"
        assert pulse["valueQuantity"]["unit"] == "/min"
    precise = next(r for r in sink.readings if r.quantities[0].value == Decimal("97.5"))
    assert observations(fhir(precise))[0]["valueQuantity"]["value"] == Decimal("97.5")


async def test_status_bits_become_mapper_names_and_a_clock_not_set_uses_receipt_time():
    # flags 0x11: time stamp + device clock not set; SpO2 97, PR 64, 2000-01-01 00:12:34
    unset_clock = "11" + "6100" + "4000" + "d0070101000c22"
    profile = oximeter(
        stored=[
            {
                "spo2": "93",
                "pulse": "88",
                "time": "2026-11-22T08:00:00",
                "plx_status": QUESTIONABLE | EARLY,
                "sensor_status": LOW_PERFUSION | DISPLACED,
            },
            {"spo2": "NaN", "pulse": "70", "time": "2026-11-22T08:01:00"},
            {"raw": unset_clock},
        ],
        live=[],
    )
    async with on_air(profile) as (device, gateway):
        sink = Sink()
        await session(gateway, sink)
        assert device.acked == [0, 1, 2]
    flagged, searching, unset = sink.readings
    assert flagged.status == (
        "questionable-measurement",
        "early-estimate",
        "signal-low-perfusion",
        "sensor-displaced",
    )
    entries = fhir(flagged)
    saturation = observations(entries)[0]
    assert saturation["status"] == "preliminary"
    interpretations = [i["coding"][0]["code"] for i in saturation["interpretation"]]
    assert interpretations == ["questionable", "early-indication"]
    (bits,) = [
        e["resource"]
        for e in entries
        if PHD_BITS_ENUMERATION_OBSERVATION_PROFILE in e["resource"]["meta"]["profile"]
    ]
    # PLXS bit 5 (low perfusion) is 10404 bit 10, PLXS bit 13 (displaced) is 10404 bit 2
    codes = {c["code"]["coding"][0]["code"] for c in bits["component"]}
    assert codes == {"150604.10", "150604.2"}
    assert values(searching) == (Absent.NAN, Decimal("70"))
    assert observations(fhir(searching))[0]["dataAbsentReason"]["coding"][0]["code"] == (
        "not-a-number"
    )
    assert values(unset) == (Decimal("97"), Decimal("64"))
    assert unset.device_time == datetime(2000, 1, 1, 0, 12, 34)  # kept as sent, for the key
    assert unset.time_source is TimeSource.GATEWAY_RECEIPT
    assert unset.effective_time == unset.received_at
    fhir(unset)


async def test_the_continuous_stream_keeps_the_first_trustworthy_sample_of_each_period():
    def sample(spo2: str, pulse: str, **status: int) -> dict[str, Any]:
        return {"spo2": spo2, "pulse": pulse, "plx_mode": "continuous", **status}

    stream = [
        sample("90", "80", plx_status=QUESTIONABLE),  # 0.0 s, period 0: flagged
        sample("96", "60"),  # 0.1 s: kept
        sample("95", "61"),  # 0.2 s: period 0 already has its sample
        sample("94", "62", plx_status=INVALID),  # 0.3 s, period 1: flagged
        sample("93", "63", plx_status=UNAVAILABLE),  # 0.4 s: flagged, period 1 stays empty
        sample("92", "64", sensor_status=DISPLACED),  # 0.5 s, period 2: sensor displaced
        sample("NaN", "65"),  # 0.6 s: still searching
        sample("97", "66", plx_status=EARLY),  # 0.7 s: kept, flagged as an early estimate
    ]
    start = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    ticks = itertools.count()

    def clock() -> datetime:  # the gateway clock: one tick of 0.1 s per sample received
        return start + next(ticks) * timedelta(milliseconds=100)

    async with on_air(oximeter(stored=[], live=stream)) as (device, gateway):
        sink = Sink()
        summary = await session(gateway, sink, period=0.25, clock=clock)
        assert device.acked == list(range(8))  # notified: all sent, none confirmed
    assert [values(r) for r in sink.readings] == [
        (Decimal("96"), Decimal("60")),
        (Decimal("97"), Decimal("66")),
    ]
    assert [r.effective_time for r in sink.readings] == [
        start + timedelta(milliseconds=100),
        start + timedelta(milliseconds=700),
    ]
    assert all(r.characteristic == "2A5F" for r in sink.readings)
    assert sink.readings[1].status == ("early-estimate",)
    assert summary.skipped == 6 and summary.readings == 2
    for reading in sink.readings:
        fhir(reading)


async def test_a_malformed_value_is_reported_and_the_others_still_delivered():
    profile = oximeter(
        stored=[
            {"spo2": "99", "pulse": "58", "time": "2026-11-22T06:00:00"},
            {"raw": "0161004800"},  # announces a time stamp it does not carry
            {"spo2": "98", "pulse": "59", "time": "2026-11-22T06:05:00"},
        ],
        live=[
            {"raw": "046100480080", "plx_mode": "continuous"},  # status cut short
            {"spo2": "96", "pulse": "61", "plx_mode": "continuous"},
        ],
    )
    async with on_air(profile) as (device, gateway):
        sink = Sink()
        summary = await session(gateway, sink)
        assert device.acked == [0, 1, 2, 3, 4]  # the malformed indication was confirmed too
    assert sink.malformed == [
        ("2A5E", bytes.fromhex("0161004800")),
        ("2A5F", bytes.fromhex("046100480080")),
    ]
    assert [values(r) for r in sink.readings] == [
        (Decimal("99"), Decimal("58")),
        (Decimal("98"), Decimal("59")),
        (Decimal("96"), Decimal("61")),  # the stream's first well-formed sample
    ]
    assert summary.malformed == 2 and summary.skipped == 0


async def test_an_unconfirmed_spot_check_is_sent_again_on_the_next_connection():
    times = [datetime(2026, 11, 22, 9, minute) for minute in range(4)]
    profile = oximeter(
        stored=[
            {"spo2": "97", "pulse": str(60 + i), "time": t.isoformat()}
            for i, t in enumerate(times[:3])
        ],
        live=[{"spo2": "96", "pulse": "63", "time": times[3].isoformat()}],
    )
    async with on_air(profile) as (device, gateway):
        sink = Sink(fail_once={times[1]})
        await session(gateway, sink)
        assert device.acked == [0]  # the second one was never confirmed: the device holds on
        assert not device.done.is_set()
        await session(gateway, sink)  # it advertises again and sends what it still holds
        assert device.acked == [0, 1, 2, 3] and device.done.is_set()
        assert device.connections == 2
    assert [r.device_time for r in sink.readings] == times
    assert sink.attempts == [times[0], times[1], times[1], times[2], times[3]]
    assert len({r.key for r in sink.readings}) == 4
