"""The CGM driver against emulated CGM sensors over bumble's virtual link: pairing, E2E-CRC,
session start time, SOCP, RACP by time offset, lost and corrupted records, the cursor.

Everything BLE here is real (bumble host stacks on both sides, SMP pairing, encrypted link, ATT
notifications and indications); only the sink standing in for the daemon is a test double.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from drivers.cgm import SESSION_STREAM, STREAM, CgmDriver
from drivers.codecs.cgm import (
    CgmMeasurement,
    CgmSessionStartTime,
    SocpOpCode,
    SocpRequest,
    SocpResponse,
    SocpResponseCode,
)
from drivers.codecs.e2e_crc import append_crc
from drivers.codecs.errors import DecodeError
from drivers.codecs.racp import RacpRequest
from drivers.models import ClockCheck, DeviceIdentity, Reading, TimeSource
from drivers.session import SessionSummary, Value
from firmware_profiles import ClockPolicy, EmulatedReading, FirmwareProfile, load_profiles
from gateway.emulator.cgm import CgmSensor
from gateway.link import AttError, GattConnection
from gateway.link.bumble_link import BumbleLink
from mappers.codes import PHD_BITS_ENUMERATION_OBSERVATION_PROFILE
from mappers.phd import map_reading
from tests import test_glucose as glucose_tests
from tests.mappers.factories import GATEWAY, PATIENT, observations, validate_entries

PROFILES = load_profiles()
SENSOR = PROFILES["generic-cgm"]
NOW = datetime(2026, 11, 24, 9, 30, 0, tzinfo=UTC)  # the gateway clock in every session here
GLUCOSE = ["112", "115", "118", "121", "119", "116", "110", "104", "98", "91", "83", "69"]
OFFSETS = list(range(0, 60, 5))


class Sink(glucose_tests.Sink):
    """The daemon's side of the driver contract, in memory; also stores by reading key, as the
    outbox does, so a replayed record lands on the one it repeats."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, Reading] = {}

    async def on_readings(self, readings: Sequence[Reading]) -> None:
        await super().on_readings(readings)
        for reading in readings:
            self.stored.setdefault(reading.key, reading)

    def cursor(self, stream: str = STREAM) -> int | None:
        return self.cursors.get((SENSOR.device.system_id or "", stream))


class Bench(glucose_tests.Bench):
    """One virtual radio with a sensor on it (``meter``) and a gateway link."""

    @property
    def sensor(self) -> CgmSensor:
        assert isinstance(self.meter.server, CgmSensor)
        return self.meter.server

    async def session(  # type: ignore[override]
        self, link: BumbleLink, sink: Sink, *, zone: tzinfo = UTC, now: datetime = NOW
    ) -> SessionSummary:
        ads = await link.scan(0.3, [CgmDriver.SERVICE])
        assert ads, "the sensor does not advertise"
        driver = CgmDriver(profiles=PROFILES, zone=zone, idle_timeout=1.0, clock=lambda: now)
        return await driver.run(link, ads[0], sink)

    async def again(self) -> None:
        """The sensor advertises again, as it does once it has something new."""
        self.meter.done.clear()
        await self.meter._advertise_if_needed()

    async def connect(self, link: BumbleLink) -> GattConnection:
        ads = await link.scan(0.3, [CgmDriver.SERVICE])
        connection = await link.connect(ads[0].address)
        await connection.discover()
        return connection


def _profile(**emulation: Any) -> FirmwareProfile:
    """generic-cgm with other emulation settings (records, losses, corruptions)."""
    data = SENSOR.model_dump()
    data["emulation"].update(emulation)
    return FirmwareProfile.model_validate(data)


def _values(sink: Sink) -> list[tuple[int | None, Decimal | None, str]]:
    return [(r.sequence, r.quantities[0].value, r.quantities[0].unit) for r in sink.readings]


def _racp(bench: Bench) -> list[str]:
    return [request.hex() for request in bench.sensor.procedures]


EXPECTED = [
    (offset, Decimal(value), "mg/dL") for offset, value in zip(OFFSETS, GLUCOSE, strict=True)
]


async def test_a_download_pairs_sets_the_start_time_and_fetches_a_lost_notification_again(
    tmp_path,
):
    async with Bench(SENSOR, tmp_path) as bench:
        sink = Sink()
        summary = await bench.session(await bench.gateway(), sink)
        assert bench.meter.pairings == 1
        assert _values(sink) == EXPECTED  # exact, in time-offset order, each once
        assert _racp(bench) == [
            "040301" + "0000",  # how many from offset 0? 12
            "010301" + "0000",  # all from 0: the notification holding 20 and 25 is lost
            "010401" + "1000" + "1d00",  # the hole between 15 and 30, asked for by range
        ]
        assert bench.sensor.socp_requests == []  # a session was running
        assert len(bench.sensor.start_writes) == 1  # nobody had set its start time
        assert bench.meter.acked == list(range(12))
    assert summary.readings == 12 and summary.malformed == 0 and not sink.malformed
    assert summary.battery == 71 and summary.device is not None
    assert summary.device.profile_id == "generic-cgm"
    assert sink.cursor() == 56  # the next time offset to ask for
    first, *_, last = sink.readings
    assert first.kind == "cgm" and first.characteristic == "2AA7"
    assert [q.name for q in first.quantities] == ["glucose"]
    assert first.status == () and first.flags == 0x00
    assert last.status == ("result-below-patient-low",) and last.flags == 0x20
    assert sink.readings[9].status == ("calibration-recommended",)
    assert first.raw == "0800700000006d73"  # the record's own bytes, E2E-CRC included
    assert first.effective_time == NOW - timedelta(minutes=55)  # the newest record is "now"


async def test_multiple_records_share_a_notification_and_each_carries_its_crc(tmp_path):
    async with Bench(_profile(lose_once=[]), tmp_path) as bench:
        connection = await bench.connect(await bench.gateway())
        values: list[bytes] = []
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_value(payload: bytes) -> None:
            values.append(payload)

        try:
            await connection.secure()
            await connection.subscribe("2AA7", on_value)
            await connection.subscribe("2A52", answers.put)
            await connection.write("2A52", RacpRequest.report_all().encode())
            assert await asyncio.wait_for(answers.get(), 5.0) == bytes.fromhex("06000101")
        finally:
            await connection.disconnect()
    assert [len(v) for v in values] == [16, 16, 16, 16, 17, 17]  # 8 octets a record, 9 with status
    offsets = [[r.time_offset for r in CgmMeasurement.decode(v, crc=True).records] for v in values]
    assert offsets == [[0, 5], [10, 15], [20, 25], [30, 35], [40, 45], [50, 55]]


async def test_a_record_with_a_bad_crc_is_rejected_then_fetched_again(tmp_path):
    async with Bench(_profile(lose_once=[], corrupt_once=[40]), tmp_path) as bench:
        sink = Sink()
        summary = await bench.session(await bench.gateway(), sink)
        assert _racp(bench) == [
            "0403010000",
            "0103010000",  # 40 arrives with a CRC that does not verify: rejected, not guessed
            "010401" + "2400" + "2c00",  # the hole between 35 and 45
        ]
    assert _values(sink) == EXPECTED  # 98 mg/dL at 40 arrives exactly once, the good copy
    assert summary.malformed == 1 and len(sink.malformed) == 1
    (error,) = sink.malformed
    assert error.characteristic == "2AA7" and error.field == "E2E-CRC"


async def test_when_the_newest_records_are_lost_only_the_count_tells(tmp_path):
    async with Bench(_profile(lose_once=[55]), tmp_path) as bench:
        sink = Sink()
        await bench.session(await bench.gateway(), sink)
        assert _racp(bench) == [
            "0403010000",
            "0103010000",  # the last notification (50 and 55) is lost: no hole shows it
            "010301" + "2e00",  # 10 of 12: ask again after the newest record received (45)
        ]
    assert _values(sink) == EXPECTED
    assert sink.cursor() == 56


async def test_the_next_download_asks_only_for_new_records_and_a_replay_adds_nothing(tmp_path):
    async with Bench(SENSOR, tmp_path) as bench:
        link = await bench.gateway()
        sink = Sink()
        await bench.session(link, sink)
        start = sink.cursor(SESSION_STREAM)
        assert start is not None
        offset = bench.sensor.measure(EmulatedReading(glucose=Decimal("72")))
        assert offset == 60
        await bench.again()
        later = NOW + timedelta(minutes=5)
        await bench.session(link, sink, now=later)
        assert _racp(bench)[-2:] == [
            "040301" + "3800",  # how many from offset 56 on? 1
            "010301" + "3800",
        ]
        assert [r.sequence for r in sink.readings[12:]] == [60]
        assert sink.readings[-1].effective_time == NOW + timedelta(minutes=5)  # start + 60 min
        assert len(bench.sensor.start_writes) == 1  # set once, kept by the sensor
        assert sink.readings[-1].clock is None  # nothing was written to the sensor this time
        assert sink.cursor() == 61 and sink.cursor(SESSION_STREAM) == start
        # the cursor is lost (a restored database): everything again, nothing new in the record
        replay = Sink()
        await bench.again()
        await bench.session(link, replay, now=later)
    assert len(replay.readings) == 13 and bench.meter.pairings == 1
    assert set(replay.stored) == set(sink.stored) and len(sink.stored) == 13


async def test_the_start_time_is_written_from_the_gateway_clock_in_the_device_zone(tmp_path):
    paris = ZoneInfo("Europe/Paris")
    async with Bench(SENSOR, tmp_path) as bench:
        sink = Sink()
        await bench.session(await bench.gateway(), sink, zone=paris)
        (written,) = bench.sensor.start_writes
    local = NOW.astimezone(paris)  # 10:30 +01:00
    assert written == CgmSessionStartTime.from_datetime(local, e2e_crc=True).encode()
    decoded = CgmSessionStartTime.decode(written, crc=True)
    assert decoded.time_zone == 4 and decoded.dst_offset == 0  # +1 h, standard time
    # the sensor takes it as its current time, 55 minutes into the session: start 09:35 local
    start = NOW - timedelta(minutes=55)
    for reading, offset in zip(sink.readings, OFFSETS, strict=True):
        assert reading.effective_time == start + timedelta(minutes=offset)
        assert reading.device_time == datetime(2026, 11, 24, 9, 35) + timedelta(minutes=offset)
        assert reading.time_source is TimeSource.DEVICE_LOCAL
        assert reading.clock == ClockCheck(
            device_time=None, gateway_time=NOW, set_to=datetime(2026, 11, 24, 10, 30)
        )
    assert sink.readings[-1].effective_time == NOW


async def test_a_start_time_already_set_is_kept_and_places_the_records(tmp_path):
    stored = [r.model_dump(exclude_defaults=True) for r in SENSOR.emulation.stored]  # type: ignore[union-attr]
    stored[0]["time"] = "2026-11-20T07:00:00+01:00"  # the sensor's clock at its first record
    async with Bench(_profile(stored=stored, lose_once=[]), tmp_path) as bench:
        sink = Sink()
        await bench.session(await bench.gateway(), sink)
        assert bench.sensor.start_writes == []
    start = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    assert [r.effective_time for r in sink.readings] == [
        start + timedelta(minutes=offset) for offset in OFFSETS
    ]
    assert sink.readings[1].device_time == datetime(2026, 11, 20, 7, 5)
    assert all(r.clock is None for r in sink.readings)


async def test_a_sensor_without_a_session_is_started_over_socp(tmp_path):
    profile = PROFILES["acme-cg14-no-crc"]
    async with Bench(profile, tmp_path) as bench:
        assert bench.sensor.status().status.session_stopped
        sink = Sink()
        summary = await bench.session(await bench.gateway(), sink)
        assert bench.sensor.socp_requests == [bytes([SocpOpCode.START_SESSION])]  # no CRC
        assert bench.sensor.running and not bench.sensor.status().status.session_stopped
        assert len(bench.sensor.start_writes) == 1
    assert summary.device is not None and summary.device.profile_id == "acme-cg14-no-crc"
    assert [(r.sequence, str(r.quantities[0].value)) for r in sink.readings] == [
        (0, "140"),
        (5, "142"),
        (10, "145"),
        (15, "149"),
        (20, "150"),
    ]
    assert all(len(r.quantities) == 1 for r in sink.readings)  # trend and quality stay raw
    assert sink.readings[3].status == ("rate-of-increase-exceeded",)
    assert sink.readings[-1].effective_time == NOW  # the sensor's newest record is "now"


async def _answers(connection: GattConnection, uuid: str) -> asyncio.Queue[bytes]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    await connection.subscribe(uuid, queue.put)
    return queue


async def test_the_sensor_refuses_an_unencrypted_link(tmp_path):
    async with Bench(SENSOR, tmp_path) as bench:
        connection = await bench.connect(await bench.gateway())
        try:
            assert len(await connection.read("2AA8")) == 6  # the feature is open to read
            for attempt in (
                connection.subscribe("2AA7", _ignore),
                connection.subscribe("2A52", _ignore),
                connection.read("2AA9"),
                connection.read("2AAA"),
                connection.write("2AAA", bytes(11)),
            ):
                with pytest.raises(AttError) as refused:
                    await attempt
                assert refused.value.needs_security
            assert not connection.is_encrypted and bench.sensor.start_writes == []
            assert await connection.secure() is True
            assert len(await connection.read("2AA9")) == 7  # status with its CRC
        finally:
            await connection.disconnect()


async def _ignore(_payload: bytes) -> None:
    return None


async def test_socp_answers_with_the_response_codes_of_the_spec(tmp_path):
    async with Bench(SENSOR, tmp_path) as bench:
        connection = await bench.connect(await bench.gateway())
        try:
            await connection.secure()
            get = SocpRequest(op_code=SocpOpCode.GET_COMMUNICATION_INTERVAL, e2e_crc=True)
            with pytest.raises(AttError) as unsubscribed:
                await connection.write("2AAC", get.encode())
            assert unsubscribed.value.code == AttError.CCCD_IMPROPERLY_CONFIGURED
            answers = await _answers(connection, "2AAC")

            async def ask(request: bytes) -> SocpResponse:
                await connection.write("2AAC", request)
                return SocpResponse.decode(await asyncio.wait_for(answers.get(), 5.0), crc=True)

            def op(code: SocpOpCode, **operands: int) -> bytes:
                return SocpRequest(op_code=code, e2e_crc=True, **operands).encode()  # type: ignore[arg-type]

            interval = await ask(get.encode())
            assert interval.op_code == SocpOpCode.COMMUNICATION_INTERVAL_RESPONSE
            assert interval.interval == 5
            fastest = await ask(op(SocpOpCode.SET_COMMUNICATION_INTERVAL, interval=0xFF))
            assert fastest.success and (await ask(get.encode())).interval == 1
            running = await ask(op(SocpOpCode.START_SESSION))
            assert running.response is SocpResponseCode.PROCEDURE_NOT_COMPLETED
            assert (await ask(op(SocpOpCode.STOP_SESSION))).success
            assert bench.sensor.status().status.session_stopped
            again = await ask(op(SocpOpCode.STOP_SESSION))
            assert again.response is SocpResponseCode.PROCEDURE_NOT_COMPLETED
            assert (await ask(op(SocpOpCode.START_SESSION))).success
            calibration = await ask(op(SocpOpCode.GET_GLUCOSE_CALIBRATION_VALUE, record_number=1))
            assert calibration.response is SocpResponseCode.OP_CODE_NOT_SUPPORTED
            unknown = await ask(append_crc(b"\x42"))
            assert (unknown.request_op_code, unknown.response) == (
                0x42,
                SocpResponseCode.OP_CODE_NOT_SUPPORTED,
            )
            short = await ask(append_crc(bytes([SocpOpCode.SET_COMMUNICATION_INTERVAL])))
            assert short.response is SocpResponseCode.INVALID_OPERAND
            with pytest.raises(AttError) as corrupted:
                await connection.write("2AAC", get.encode()[:-1] + b"\x00")
            assert corrupted.value.code == 0x81  # CGMS "Invalid CRC"
        finally:
            await connection.disconnect()


async def test_emitted_readings_map_to_valid_phd_fhir(tmp_path):
    async with Bench(SENSOR, tmp_path) as bench:
        sink = Sink()
        await bench.session(await bench.gateway(), sink)
    first, last = sink.readings[0], sink.readings[-1]
    entries = map_reading(first, PATIENT, GATEWAY)
    validate_entries(entries)
    glucose = next(o for o in observations(entries) if o["code"]["coding"][0]["code"] == "160212")
    assert glucose["valueQuantity"]["value"] == Decimal("112")
    assert glucose["valueQuantity"]["code"] == "mg/dL"
    assert glucose["effectiveDateTime"] == "2026-11-24T08:35:00+00:00"
    entries = map_reading(last, PATIENT, GATEWAY)
    validate_entries(entries)
    bits = [
        o
        for o in observations(entries)
        if PHD_BITS_ENUMERATION_OBSERVATION_PROFILE in o["meta"]["profile"]
    ]
    assert len(bits) == 1
    assert [c["code"]["coding"][0]["display"] for c in bits[0]["component"]] == [
        "sensor-result-below-patient-low"
    ]


def test_a_lone_value_decodes_its_first_record_at_the_receipt_time():
    """``edge decode``: no session start time to place it, and the CRC still checked."""
    payload = bytes.fromhex("0800700000006d73" + "0800730005001828")  # two records, with CRC
    value = Value(
        payload=payload,
        device=DeviceIdentity(address="C0:ED:6E:00:00:09"),
        received_at=NOW,
        policy=ClockPolicy.LOCAL,
        zone=UTC,
    )
    reading = CgmDriver.to_reading(value)
    assert (reading.sequence, reading.quantities[0].value) == (0, Decimal("112"))
    assert reading.time_source is TimeSource.GATEWAY_RECEIPT and reading.effective_time == NOW
    with pytest.raises(DecodeError, match="E2E-CRC"):
        CgmDriver.to_reading(replace(value, payload=payload[:7] + b"\x00" + payload[8:]))


async def test_a_record_that_never_verifies_holds_back_only_itself(tmp_path):
    async with Bench(_profile(lose_once=[]), tmp_path) as bench:
        sensor = bench.sensor
        wire = sensor._wire

        def always_corrupt(offset: int) -> bytes:
            data = wire(offset)
            return data[:-1] + bytes([data[-1] ^ 0xFF]) if offset == 40 else data

        sensor._wire = always_corrupt  # type: ignore[method-assign]
        sink = Sink()
        summary = await bench.session(await bench.gateway(), sink)
    # every other record is delivered; the cursor stays at the one still missing
    assert [v for v in _values(sink)] == [e for e in EXPECTED if e[0] != 40]
    assert sink.cursor() == 36  # just after 35, the last record before the gap
    assert summary.malformed >= 1


async def test_a_stopped_session_is_downloaded_before_a_new_one_starts(tmp_path):
    async with Bench(_profile(lose_once=[]), tmp_path) as bench:
        sink = Sink()
        await bench.session(await bench.gateway(), sink)  # sets the start time, downloads
        first_times = {r.sequence: r.effective_time for r in sink.readings}
        bench.sensor.running = False  # the sensor session ended (sensor expired)
        bench.sensor.measure(EmulatedReading(glucose=Decimal("77"), time_offset=60))
        await bench.again()
        later = Sink()
        later.cursors = dict(sink.cursors)
        await bench.session(await bench.gateway(), later)
        assert bench.sensor.socp_requests[-1][0] == SocpOpCode.START_SESSION
        assert bench.sensor.running  # a new session was started, after the download
    # the last record of the stopped session arrived, placed by that session's start time
    (last,) = [r for r in later.readings if r.sequence == 60]
    assert last.effective_time - first_times[55] == timedelta(minutes=5)
