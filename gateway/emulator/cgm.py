"""An emulated continuous glucose monitor (CGMS 0x181F), built from a firmware profile.

A CGM sensor measures every few minutes and stamps each record with its *time offset*: minutes
since the session started, nothing more. The wall clock lives in one place, the Session Start
Time, which the collector writes. Records reach the collector as notifications on CGM
Measurement, several Size-delimited records to a value when they fit (the ATT payload is 20
octets by default), asked for over RACP (``racp_server``, filter 0x01 = time offset). When CGM
Feature b12 is set every value, both ways, ends in an E2E-CRC. The Specific Ops Control Point
starts and stops the session and sets the communication interval.

It emulates what makes the collector's side hard: records lost on the air (``lose_once``: the
notification carrying them goes missing), a record whose first transmission carries a wrong CRC
(``corrupt_once``), a sensor with no session running yet, a Session Start Time nobody set, and
the security CGMS requires (a bonded, encrypted link, as for GLS).

Two simplifications: the session is compressed in time (records exist as soon as a session has
run, the sensor's current time offset is its newest record's), and a written Session Start Time
is taken as the collector's *current* time, from which the sensor derives the start by
subtracting its current time offset (what nRF5's ``calc_sst`` does); zone and DST are kept as
written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from bumble import att
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue

from drivers import uuids
from drivers.codecs.cgm import (
    DST_UNKNOWN,
    INTERVAL_FASTEST,
    TIME_ZONE_UNKNOWN,
    CgmAnnunciation,
    CgmFeature,
    CgmRecord,
    CgmSampleLocation,
    CgmSessionRunTime,
    CgmSessionStartTime,
    CgmStatus,
    CgmType,
    SocpOpCode,
    SocpRequest,
    SocpResponse,
    SocpResponseCode,
)
from drivers.codecs.date_time import DateTime
from drivers.codecs.e2e_crc import CRC_SIZE, has_valid_crc
from drivers.codecs.errors import DecodeError
from drivers.codecs.ieee11073 import MedFloat
from firmware_profiles import CgmFacts, EmulatedReading, FirmwareProfile
from gateway.emulator.racp_server import (
    ATT_CCCD_IMPROPERLY_CONFIGURED,
    ATT_PROCEDURE_ALREADY_IN_PROGRESS,
    RacpServer,
    demand_security,
    indicate,
    indications_enabled,
    notifying,
    spawn,
    uuid16,
)

RUN_TIME_HOURS = 336  # a 14-day sensor
FASTEST_INTERVAL = 1  # minutes: what SOCP "fastest supported" (0xFF) sets
# CGMS application ATT errors on values carrying an E2E-CRC, and the common "out of range".
ATT_MISSING_CRC = 0x80
ATT_INVALID_CRC = 0x81
ATT_OUT_OF_RANGE = 0xFF
_SESSION_STOPPED = 1 << 0
_TIME_SYNCHRONIZATION_REQUIRED = 1 << 8
_UNSET = DateTime(0, 0, 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    index: int  # position among the profile's readings (what ``delivered`` holds)
    offset: int  # time offset, minutes: the record's RACP key
    data: bytes  # the record on the wire, CRC included


def _sfloat(value: Decimal | None, wanted: bool, name: str) -> MedFloat | None:
    if value is not None and not wanted:
        raise ValueError(f"a record has {name} but the sensor's feature does not offer it")
    return None if value is None else MedFloat.from_decimal(value, short=True)


def encode_record(reading: EmulatedReading, offset: int, facts: CgmFacts) -> bytes:
    """One record as the sensor sends it (raw readings verbatim); absent octets are skipped."""
    if reading.raw is not None:
        return bytes.fromhex(reading.raw)
    assert reading.glucose is not None, "the profile schema requires glucose"
    status = CgmAnnunciation(reading.cgm_status or 0)
    return CgmRecord(
        glucose=MedFloat.from_decimal(reading.glucose, short=True),
        time_offset=offset,
        status_octet=status.status_octet or None,
        cal_temp_octet=status.cal_temp_octet or None,
        warning_octet=status.warning_octet or None,
        trend=_sfloat(reading.trend, facts.trend, "a trend"),
        quality=_sfloat(reading.quality, facts.quality, "a quality"),
        e2e_crc=facts.e2e_crc,
    ).encode()


def _start_from(
    readings: Sequence[EmulatedReading], offsets: Sequence[int], e2e_crc: bool
) -> CgmSessionStartTime | None:
    """A profile whose records carry the sensor's wall clock (``time``) has its start time set
    already: that time minus the record's offset (zone known only when the text gives one)."""
    for reading, offset in zip(readings, offsets, strict=True):
        if reading.time is None:
            continue
        start = datetime.fromisoformat(reading.time) - timedelta(minutes=offset)
        if start.tzinfo is not None:
            return CgmSessionStartTime.from_datetime(start, e2e_crc=e2e_crc)
        return CgmSessionStartTime(start=DateTime.from_datetime(start), e2e_crc=e2e_crc)
    return None


class CgmSensor(RacpServer):
    """The CGM service of one sensor: its records, session state and control points."""

    def __init__(
        self,
        readings: Sequence[EmulatedReading],
        facts: CgmFacts | None = None,
        *,
        lose_once: Iterable[int] = (),
        corrupt_once: Iterable[int] = (),
        max_packet: int = 20,
        pace: float = 0.0,
    ) -> None:
        super().__init__(pace=pace)
        self.facts = facts = facts or CgmFacts()
        self.e2e_crc = facts.e2e_crc
        self.corrupt_once = set(corrupt_once)
        if self.corrupt_once and not self.e2e_crc:
            raise ValueError("corrupt_once needs a sensor with E2E-CRC (device.cgm.e2e_crc)")
        self.lose_once = set(lose_once)
        self.max_packet = max_packet  # ATT MTU - 3: the longest notification value
        offsets = [
            r.time_offset if r.time_offset is not None else facts.interval * i
            for i, r in enumerate(readings)
        ]
        self.records: dict[int, StoredRecord] = {}
        for index, (reading, offset) in enumerate(zip(readings, offsets, strict=True)):
            if not 0 <= offset <= 0xFFFF or offset in self.records:
                raise ValueError(f"record {index}: time offset {offset} is out of range or taken")
            self.records[offset] = StoredRecord(
                index, offset, encode_record(reading, offset, facts)
            )
        self.running = facts.session_running
        self.measured = facts.session_running  # a session has run: its records exist
        self.start = _start_from(readings, offsets, self.e2e_crc)
        self.interval = facts.interval  # SOCP communication interval, minutes
        self.socp_requests: list[bytes] = []  # every SOCP write received, for tests
        self.start_writes: list[bytes] = []  # every Session Start Time write received
        self._socp: asyncio.Task[None] | None = None
        self.measurement = notifying(uuids.CGM_MEASUREMENT)
        self.status_value: Characteristic[bytes] = Characteristic(
            uuid16(uuids.CGM_STATUS),
            Characteristic.Properties.READ,
            Characteristic.READABLE,
            CharacteristicValue(read=lambda _connection: self.status().encode()),
        )
        self.start_time: Characteristic[bytes] = Characteristic(
            uuid16(uuids.CGM_SESSION_START_TIME),
            Characteristic.Properties.READ | Characteristic.Properties.WRITE,
            Characteristic.READABLE | Characteristic.WRITEABLE,
            CharacteristicValue(read=lambda _c: self.start_value(), write=self._on_start_written),
        )
        self.run_time: Characteristic[bytes] = Characteristic(
            uuid16(uuids.CGM_SESSION_RUN_TIME),
            Characteristic.Properties.READ,
            Characteristic.READABLE,
            CgmSessionRunTime(hours=RUN_TIME_HOURS, e2e_crc=self.e2e_crc).encode(),
        )
        self.socp: Characteristic[bytes] = Characteristic(
            uuid16(uuids.CGM_SPECIFIC_OPS_CONTROL_POINT),
            Characteristic.Properties.WRITE | Characteristic.Properties.INDICATE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self._on_socp),
        )

    @classmethod
    def from_profile(cls, profile: FirmwareProfile) -> CgmSensor:
        emulation = profile.emulation
        if emulation is None:
            return cls([], profile.device.cgm)
        return cls(
            [*emulation.stored, *emulation.live],  # a sensor stores what it measured
            profile.device.cgm,
            lose_once=emulation.lose_once,
            corrupt_once=emulation.corrupt_once,
            max_packet=emulation.max_packet,
        )

    @property
    def total(self) -> int:
        return len(self.records)

    @property
    def now(self) -> int:
        """The sensor's current time offset: its newest record's, once a session has run."""
        return max(self.keys(), default=0)

    def measure(self, reading: EmulatedReading) -> int:
        """The running session takes one more measurement, an interval after the newest one;
        returns its time offset (for tests of the next download)."""
        offset = self.now + self.facts.interval if self.keys() else 0
        data = encode_record(reading, offset, self.facts)
        self.records[offset] = StoredRecord(len(self.records), offset, data)
        return offset

    def feature(self) -> CgmFeature:
        return CgmFeature(
            sensor_malfunction_detection=True,
            sensor_temperature_high_low_detection=True,
            sensor_result_high_low_detection=True,
            low_battery_detection=True,
            general_device_fault=True,
            e2e_crc=self.e2e_crc,
            multiple_sessions=True,
            trend_information=self.facts.trend,
            quality=self.facts.quality,
            sample_type=CgmType.INTERSTITIAL_FLUID,
            sample_location=CgmSampleLocation.SUBCUTANEOUS_TISSUE,
        )

    def status(self) -> CgmStatus:
        bits = 0 if self.running else _SESSION_STOPPED
        if self.running and self.start is None:
            bits |= _TIME_SYNCHRONIZATION_REQUIRED  # the collector should write the start time
        return CgmStatus(time_offset=self.now, status=CgmAnnunciation(bits), e2e_crc=self.e2e_crc)

    def start_value(self) -> bytes:
        """The Session Start Time; all unknown (date 0, zone -128, DST 255) until written."""
        start = self.start or CgmSessionStartTime(
            start=_UNSET, time_zone=TIME_ZONE_UNKNOWN, dst_offset=DST_UNKNOWN, e2e_crc=self.e2e_crc
        )
        return start.encode()

    def characteristics(self) -> list[Characteristic[bytes]]:
        feature = Characteristic(
            uuid16(uuids.CGM_FEATURE),
            Characteristic.Properties.READ,
            Characteristic.READABLE,
            self.feature().encode(),
        )
        return [
            self.measurement,
            feature,
            self.status_value,
            self.start_time,
            self.run_time,
            self.control_point,
            self.socp,
        ]

    def bind(self, device: Device, *, encrypted: bool, authenticated: bool) -> None:
        """After ``add_services``: everything but the feature needs the bonded link."""
        self._device = device
        if encrypted:
            demand_security(
                device,
                uuids.CGM_SERVICE,
                subscribed=(self.measurement, self.control_point, self.socp),
                written=(self.control_point, self.socp, self.start_time),
                read=(self.status_value, self.start_time, self.run_time),
                authenticated=authenticated,
            )

    def on_disconnection(self) -> None:
        super().on_disconnection()
        if self._socp is not None:
            self._socp.cancel()
            self._socp = None

    # -- records over RACP ---------------------------------------------------------------------
    def keys(self) -> list[int]:
        return sorted(self.records) if self.measured else []

    def mark_delivered(self, selected: list[int]) -> None:
        self.delivered.update(self.records[offset].index for offset in selected)

    async def send(self, connection: Connection, selected: list[int]) -> None:
        """As many whole records per notification as fit in ``max_packet`` octets."""
        packets: list[list[int]] = []
        size = 0
        for offset in selected:
            length = len(self.records[offset].data)
            if not packets or size + length > self.max_packet:
                packets.append([])
                size = 0
            packets[-1].append(offset)
            size += length
        for count, packet in enumerate(packets, 1):
            if self.lose_once.intersection(packet):
                self.lose_once.difference_update(packet)  # the radio ate the whole notification
            else:
                payload = b"".join(self._wire(offset) for offset in packet)
                await self.device.notify_subscriber(connection, self.measurement, payload)
            await self.pause(count)

    def _wire(self, offset: int) -> bytes:
        data = self.records[offset].data
        if offset in self.corrupt_once:
            self.corrupt_once.discard(offset)
            return data[:-1] + bytes([data[-1] ^ 0xFF])  # a CRC that does not verify
        return data

    # -- Session Start Time and the Specific Ops Control Point ----------------------------------
    def _check_crc(self, value: bytes) -> None:
        """Collector writes carry an E2E-CRC too when the feature says so (CGMS §3)."""
        if not self.e2e_crc:
            return
        if len(value) <= CRC_SIZE:
            raise att.ATT_Error(ATT_MISSING_CRC)
        if not has_valid_crc(value):
            raise att.ATT_Error(ATT_INVALID_CRC)

    def _on_start_written(self, _connection: Connection, value: bytes) -> None:
        value = bytes(value)
        self.start_writes.append(value)
        self._check_crc(value)
        try:
            written = CgmSessionStartTime.decode(value, crc=self.e2e_crc)
        except DecodeError:
            raise att.ATT_Error(ATT_OUT_OF_RANGE) from None
        now = written.start.to_datetime()
        if now is None:
            raise att.ATT_Error(ATT_OUT_OF_RANGE)
        start = DateTime.from_datetime(now - timedelta(minutes=self.now))
        self.start = CgmSessionStartTime(
            start=start,
            time_zone=written.time_zone,
            dst_offset=written.dst_offset,
            e2e_crc=self.e2e_crc,
        )

    def _on_socp(self, connection: Connection, value: bytes) -> None:
        value = bytes(value)
        self.socp_requests.append(value)
        if not indications_enabled(self.device, connection, self.socp):
            raise att.ATT_Error(ATT_CCCD_IMPROPERLY_CONFIGURED)
        if self._socp is not None and not self._socp.done():
            raise att.ATT_Error(ATT_PROCEDURE_ALREADY_IN_PROGRESS)
        self._check_crc(value)
        response = self._answer_socp(value)
        if response.success or response.op_code != SocpOpCode.RESPONSE_CODE:
            self.answered += 1
        self._socp = spawn(indicate(self.device, connection, self.socp, response.encode()))

    def _answer_socp(self, value: bytes) -> SocpResponse:
        try:
            request = SocpRequest.decode(value, crc=self.e2e_crc)
        except DecodeError as exc:
            unknown = exc.field == "Op Code"
            code = (
                SocpResponseCode.OP_CODE_NOT_SUPPORTED
                if unknown
                else SocpResponseCode.INVALID_OPERAND
            )
            return self._result(value[0] if value else 0, code)
        op = request.op_code
        if op == SocpOpCode.SET_COMMUNICATION_INTERVAL:
            interval = request.interval or 0  # 0: periodic communication off
            self.interval = FASTEST_INTERVAL if interval == INTERVAL_FASTEST else interval
            return self._result(op, SocpResponseCode.SUCCESS)
        if op == SocpOpCode.GET_COMMUNICATION_INTERVAL:
            return SocpResponse(
                op_code=SocpOpCode.COMMUNICATION_INTERVAL_RESPONSE,
                interval=self.interval,
                e2e_crc=self.e2e_crc,
            )
        if op == SocpOpCode.START_SESSION:
            if self.running:
                return self._result(op, SocpResponseCode.PROCEDURE_NOT_COMPLETED)
            if self.measured:  # a session ran before: its records go with it (a new sensor)
                self.records.clear()
            self.running = self.measured = True
            self.start = None  # a new session: the collector writes its start time
            return self._result(op, SocpResponseCode.SUCCESS)
        if op == SocpOpCode.STOP_SESSION:
            if not self.running:
                return self._result(op, SocpResponseCode.PROCEDURE_NOT_COMPLETED)
            self.running = False
            return self._result(op, SocpResponseCode.SUCCESS)
        # calibration, alert levels, device-specific alert: not in this sensor's feature
        return self._result(op, SocpResponseCode.OP_CODE_NOT_SUPPORTED)

    def _result(self, request_op_code: int, code: SocpResponseCode) -> SocpResponse:
        return SocpResponse(
            op_code=SocpOpCode.RESPONSE_CODE,
            request_op_code=request_op_code,
            response_value=code,
            e2e_crc=self.e2e_crc,
        )


def from_profile(profile: FirmwareProfile) -> CgmSensor:
    """The profile server ``EmulatedDevice`` plugs into the CGM service."""
    return CgmSensor.from_profile(profile)
