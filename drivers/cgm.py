"""Continuous Glucose Monitoring Service: download a CGM sensor's records over RACP.

A CGM sensor stamps its records with a *time offset* (minutes since its session started) and
keeps the wall clock in one place, the Session Start Time, which the collector writes. Records
arrive as notifications that nobody confirms, several to a value, and each may end in an E2E-CRC
that only CGM Feature b12 announces. So the driver (1) pairs first: CGMS sensors require a
bonded, encrypted link; (2) reads the feature, which decides how every other value decodes;
(3) starts a session when none runs and, when nobody set the Session Start Time, writes it from
the gateway clock (said on the readings as a ``ClockCheck``); (4) asks how many records lie
beyond the durable cursor (the next time offset, valid for one session) and reports them;
(5) rejects any record whose CRC does not verify (quarantined as malformed, never guessed) and
fetches again, by time offset, whatever the count says is missing: records lost on the air and
rejected ones leave holes wider than the sensor's interval; (6) delivers the readings in
time-offset order, then moves the cursor on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Generic, TypeVar

from drivers import uuids
from drivers.codecs.cgm import (
    CgmFeature,
    CgmMeasurement,
    CgmRecord,
    CgmSessionRunTime,
    CgmSessionStartTime,
    CgmStatus,
    SocpOpCode,
    SocpRequest,
    SocpResponse,
)
from drivers.codecs.date_time import DateTime
from drivers.codecs.errors import DecodeError
from drivers.codecs.racp import (
    CGMS_TIME_OFFSET,
    OpCode,
    Operator,
    RacpRequest,
    RacpResponse,
    ResponseCode,
)
from drivers.models import Absent, ClockCheck, Quantity, Reading, TimeSource
from drivers.session import MeasurementDriver, Session, Value
from firmware_profiles import ClockPolicy
from gateway.link.base import LinkError

log = logging.getLogger(__name__)

KIND = "cgm"
STREAM = "cgm"  # the cursor: the next time offset to ask for, one per device
# Which session that time offset counts in: its start (seconds since 2000, wall clock). Offsets
# restart at 0 with every session, so a cursor from another session must not be trusted.
SESSION_STREAM = "cgm-session"
MAX_OFFSET = 0xFFFF
_EPOCH = datetime(2000, 1, 1)

# Sensor Status Annunciation -> status names of mappers.codes.CGM_STATUS. Battery low, general
# device fault and time synchronisation required have no PHD CGM status bit (the mapper refuses
# them): they are device conditions, kept in the raw bytes.
STATUS_NAMES = {
    "session_stopped": "session-stopped",
    "sensor_type_incorrect": "sensor-type-incorrect",
    "sensor_malfunction": "sensor-malfunction",
    "device_specific_alert": "device-specific-alert",
    "calibration_not_allowed": "calibration-not-allowed",
    "calibration_recommended": "calibration-recommended",
    "calibration_required": "calibration-required",
    "sensor_temperature_too_high": "sensor-temperature-too-high",
    "sensor_temperature_too_low": "sensor-temperature-too-low",
    "result_lower_than_patient_low_level": "result-below-patient-low",
    "result_higher_than_patient_high_level": "result-above-patient-high",
    "result_lower_than_hypo_level": "result-below-hypo",
    "result_higher_than_hyper_level": "result-above-hyper",
    "rate_of_decrease_exceeded": "rate-of-decrease-exceeded",
    "rate_of_increase_exceeded": "rate-of-increase-exceeded",
    "result_lower_than_device_can_process": "result-too-low",
    "result_higher_than_device_can_process": "result-too-high",
}


def _glucose(record: CgmRecord) -> Quantity:
    """Glucose in mg/dL, exact. Trend and quality have no mapped code: they stay in ``raw``."""
    special = record.glucose.special
    if special is not None:
        return Quantity(name="glucose", value=None, unit="mg/dL", absent=Absent(special))
    return Quantity(name="glucose", value=record.glucose_value, unit="mg/dL")


def _status(record: CgmRecord) -> tuple[str, ...]:
    annunciation = record.annunciation
    return tuple(name for attr, name in STATUS_NAMES.items() if getattr(annunciation, attr))


def reading_from_record(
    record: CgmRecord, start: CgmSessionStartTime | None, value: Value
) -> Reading:
    """Turn one record into a ``Reading`` (pure); its time is the session start + its offset.

    When the start time carries its own UTC offset the effective time is computed from it, so a
    session spanning a DST change stays exact; otherwise the profile's clock policy places it.
    """
    offset = timedelta(minutes=record.time_offset)
    wall = start.start.to_datetime() if start is not None else None
    reading = value.reading(
        kind=KIND,
        characteristic=uuids.CGM_MEASUREMENT,
        quantities=[_glucose(record)],
        timestamp=None if wall is None else wall + offset,
        user_index=None,
        sequence=record.time_offset,
        status=_status(record),
    )
    aware = start.to_datetime() if start is not None else None
    if aware is not None and reading.time_source is not TimeSource.GATEWAY_RECEIPT:
        reading = replace(reading, effective_time=aware + offset)
    return replace(reading, flags=record.flags)  # byte 0 of a record is its Size


def _session_key(start: CgmSessionStartTime) -> int | None:
    wall = start.start.to_datetime()
    return None if wall is None else int((wall - _EPOCH).total_seconds())


class CgmError(LinkError):
    """The sensor refused a request, did not answer, or sent a value that cannot be trusted."""


class CgmDriver(MeasurementDriver):
    SERVICE = uuids.CGM_SERVICE
    MEASUREMENT = uuids.CGM_MEASUREMENT
    FEATURE = uuids.CGM_FEATURE
    KIND = KIND
    PROFILE_KIND = "cgm"
    CATEGORY = "glucose"  # consent: the same category as the glucose meter's

    procedure_timeout = 30.0  # seconds a sensor may take to answer one control-point request
    attempts = 3  # downloads of the missing records before giving up until next time

    @classmethod
    def to_reading(cls, value: Value) -> Reading:
        """A lone CGM Measurement value (``edge decode``): its first record, with no session
        start time to place it, so at the receipt time."""
        feature = value.feature
        crc = feature.e2e_crc if isinstance(feature, CgmFeature) else None
        record = CgmMeasurement.decode(value.payload, crc=crc).records[0]
        return reading_from_record(record, None, value)

    @classmethod
    def decode_feature(cls, data: bytes) -> CgmFeature:
        return CgmFeature.decode(data)

    async def collect(self, session: Session) -> None:
        await session.connection.secure()
        feature = await _feature(session)
        sensor = _Sensor(session, feature, self.procedure_timeout)
        await sensor.subscribe()
        status = await sensor.read(uuids.CGM_STATUS, CgmStatus.decode)
        start = await sensor.read(uuids.CGM_SESSION_START_TIME, CgmSessionStartTime.decode)
        if status.status.session_stopped:
            # A stopped session's records first, under their own start time: starting a new
            # session changes the start time (and may clear the memory on some sensors).
            if start.start.to_datetime() is not None:
                await self._download(sensor, start, status)
            if not await sensor.start_session():
                return
            status = await sensor.read(uuids.CGM_STATUS, CgmStatus.decode)
            start = await sensor.read(uuids.CGM_SESSION_START_TIME, CgmSessionStartTime.decode)
        if start.start.to_datetime() is None:
            start = await sensor.set_start_time()
        await sensor.run_time(status)
        await self._download(sensor, start, status)

    async def _download(
        self, sensor: _Sensor, start: CgmSessionStartTime, status: CgmStatus
    ) -> None:
        """The session's records from the cursor on, stored, then the cursor moved."""
        sensor.records.clear()  # offsets count from one session's start: never mix two
        first = await sensor.first_offset(start, status)
        if first is None:
            return
        expected = await sensor.count(first)
        if not expected:
            return  # nothing new on the sensor
        await sensor.fetch(first, expected, self.attempts)
        await sensor.deliver(first, expected, start)


async def _feature(session: Session) -> CgmFeature:
    """The feature read before pairing, or read again now (it decides every other decode)."""
    feature = session.summary.feature
    if isinstance(feature, CgmFeature):
        return feature
    payload = await session.connection.read(uuids.CGM_FEATURE)
    try:
        feature = CgmFeature.decode(payload)
    except DecodeError as exc:
        await session.malformed(uuids.CGM_FEATURE, payload, exc)
        raise CgmError("the CGM Feature could not be trusted: nothing else can be decoded") from exc
    session.summary.feature = feature
    return feature


T = TypeVar("T")


class _ControlPoint(Generic[T]):
    """A write + indicate control point: one request at a time, answered by one indication.

    Each request waits on its own future, so an answer that comes after its request timed out
    is dropped rather than taken for the next request's.
    """

    def __init__(
        self,
        session: Session,
        uuid: str,
        decode: Callable[[bytes], T],
        timeout: float,
        abort: bytes | None = None,
    ) -> None:
        self.session = session
        self.uuid = uuid
        self.decode = decode
        self.timeout = timeout
        self.abort = abort  # written when an answer never comes (RACP), so the next one can run
        self._answer: asyncio.Future[T] | None = None

    async def subscribe(self) -> None:
        """Indications before any request (spec §2: else ATT 0xFD)."""
        await self.session.connection.subscribe(self.uuid, self._on_indication)

    async def _on_indication(self, payload: bytes) -> None:
        try:
            answer = self.decode(payload)
        except DecodeError as exc:  # a corrupted answer: the request times out, never guessed
            await self.session.malformed(self.uuid, payload, exc)
            return
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(answer)

    async def ask(self, request: bytes) -> T:
        """Write ``request``; the decoded indication that ends it, or ``CgmError``."""
        self._answer = asyncio.get_running_loop().create_future()
        connection = self.session.connection
        await connection.write(self.uuid, request)
        try:
            return await asyncio.wait_for(self._answer, self.timeout)
        except TimeoutError:
            if self.abort is not None:
                await connection.write(self.uuid, self.abort)
            raise CgmError(f"the sensor did not answer on {uuids.NAMES[self.uuid]}") from None
        finally:
            self._answer = None


class _Sensor:
    """One session's conversation with a CGM sensor, and the records it sent back."""

    def __init__(self, session: Session, feature: CgmFeature, timeout: float) -> None:
        self.session = session
        self.crc = feature.e2e_crc
        self.records: dict[int, tuple[CgmRecord, datetime]] = {}
        self.clock: ClockCheck | None = None  # set when the gateway wrote the start time
        self.racp = _ControlPoint(
            session,
            uuids.RECORD_ACCESS_CONTROL_POINT,
            RacpResponse.decode,
            timeout,
            abort=RacpRequest.abort().encode(),
        )
        self.socp = _ControlPoint(
            session,
            uuids.CGM_SPECIFIC_OPS_CONTROL_POINT,
            lambda payload: SocpResponse.decode(payload, crc=self.crc),
            timeout,
        )

    async def subscribe(self) -> None:
        await self.session.connection.subscribe(uuids.CGM_MEASUREMENT, self._on_measurement)
        await self.racp.subscribe()
        await self.socp.subscribe()

    async def _on_measurement(self, payload: bytes) -> None:
        """Keep every record that verifies; report the others, whose offsets cannot be trusted."""
        received_at = self.session.clock()
        bad: list[DecodeError] = []
        for result in CgmMeasurement.decode_records(payload, crc=self.crc):
            if isinstance(result, DecodeError):
                bad.append(result)
            else:
                self.records[result.time_offset] = (result, received_at)
        for error in bad:  # after the good ones are kept: reporting may wait on the sink
            await self.session.malformed(uuids.CGM_MEASUREMENT, payload, error)

    async def read(self, uuid: str, decode: Callable[..., T]) -> T:
        """Read and decode a CGMS value with the feature's CRC setting; refuse a bad one."""
        payload = await self.session.connection.read(uuid)
        try:
            value: T = decode(payload, crc=self.crc)
        except DecodeError as exc:
            await self.session.malformed(uuid, payload, exc)
            raise CgmError(f"the sensor's {uuids.NAMES[uuid]} could not be trusted") from exc
        return value

    async def start_session(self) -> bool:
        """Start a session when none runs; a refusal (an expired sensor) still leaves the
        stopped session's records to download, so it is reported, not raised."""
        request = SocpRequest(op_code=SocpOpCode.START_SESSION, e2e_crc=self.crc)
        try:
            response = await self.socp.ask(request.encode())
        except CgmError:
            log.warning("the CGM sensor did not answer Start Session")
            return False
        if not response.success:
            log.warning("the CGM sensor refused to start a session (%s)", response.response_value)
            return False
        log.info("no CGM session was running: started one")
        return True

    async def run_time(self, status: CgmStatus) -> None:
        """The session's expected length, for diagnostics only: a bad value stops nothing."""
        if not self.session.connection.has(uuids.CGM_SESSION_RUN_TIME):
            return
        try:
            run = await self.read(uuids.CGM_SESSION_RUN_TIME, CgmSessionRunTime.decode)
        except CgmError:
            return
        log.debug("CGM session at %d min of %d h", status.time_offset, run.hours)

    async def set_start_time(self) -> CgmSessionStartTime:
        """Write the gateway's current time in the device's zone; the sensor derives its start
        from it (CGMS: written time minus its current time offset), so read back what it keeps."""
        session = self.session
        now = session.clock()
        zone = UTC if session.policy is ClockPolicy.UTC else session.zone
        wall = now.astimezone(zone).replace(microsecond=0)
        try:
            written = CgmSessionStartTime.from_datetime(wall, e2e_crc=self.crc)
        except ValueError:  # a zone the field cannot express: the wall clock, zone unknown
            naive = wall.replace(tzinfo=None)
            written = CgmSessionStartTime(start=DateTime.from_datetime(naive), e2e_crc=self.crc)
        await session.connection.write(uuids.CGM_SESSION_START_TIME, written.encode())
        start = await self.read(uuids.CGM_SESSION_START_TIME, CgmSessionStartTime.decode)
        if start.start.to_datetime() is None:
            raise CgmError("the sensor kept no session start time: its records cannot be placed")
        self.clock = ClockCheck(
            device_time=None, gateway_time=now, set_to=written.start.to_datetime()
        )
        log.info("CGM session start time was unset: set it from the gateway clock")
        return start

    async def first_offset(self, start: CgmSessionStartTime, status: CgmStatus) -> int | None:
        """Where to download from: the cursor, unless it counts in another session (or beyond
        the sensor's current time offset, a sensor reset); None when nothing can be newer."""
        sink, identity = self.session.sink, self.session.identity
        cursor = await sink.load_cursor(identity, STREAM)
        if cursor is None:
            return 0
        same = await sink.load_cursor(identity, SESSION_STREAM) == _session_key(start)
        if same and cursor - 1 <= status.time_offset:
            return cursor if cursor <= MAX_OFFSET else None
        log.info("a new CGM session since the last download: downloading it from its start")
        return 0

    async def count(self, first: int) -> int:
        request = RacpRequest(
            op_code=OpCode.REPORT_NUMBER_OF_STORED_RECORDS,
            operator=Operator.GREATER_THAN_OR_EQUAL,
            filter_type=CGMS_TIME_OFFSET,
            operand=first.to_bytes(2, "little"),
        )
        response = await self.racp.ask(request.encode())
        if response.records is None:
            raise CgmError(f"the sensor refused to count records ({response.response_code})")
        return response.records

    def received(self, first: int) -> list[int]:
        return sorted(offset for offset in self.records if offset >= first)

    async def fetch(self, first: int, expected: int, attempts: int) -> None:
        """Report from ``first``; while the count says records are missing, ask for the holes
        between records, then for what may lie before the first or after the last."""
        _check(await self.racp.ask(RacpRequest.report_time_offset_at_least(first).encode()))
        for _ in range(attempts):
            if len(self.received(first)) >= expected:
                return
            for low, high in _holes(self.received(first), first):
                _check(await self.racp.ask(_report_range(low, high).encode()))
            got = self.received(first)
            if len(got) >= expected:
                return
            if got and got[0] > first:
                _check(await self.racp.ask(_report_range(first, got[0] - 1).encode()))
            tail = got[-1] + 1 if got else first
            if tail <= MAX_OFFSET:
                _check(await self.racp.ask(RacpRequest.report_time_offset_at_least(tail).encode()))
        if len(self.received(first)) < expected:
            log.warning("CGM download still incomplete after %d attempts", attempts)

    async def deliver(self, first: int, expected: int, start: CgmSessionStartTime) -> None:
        """Every verified record, in time-offset order (one record that never verifies must not
        hold back the others). The cursor moves past them only when the download is complete:
        the count is met and no gap is left (a live record arriving meanwhile can make up the
        count of a lost one). Otherwise it stops at the first gap, or stays where it was; the
        next download asks again and the repeats deduplicate."""
        session = self.session
        got = self.received(first)
        holes = _holes(got, first)
        complete = len(got) >= expected and not holes
        if complete:
            cursor = got[-1] + 1 if got else first
        else:
            cursor = holes[0][0] if holes else first
            log.info("CGM download incomplete: the cursor stays before the missing records")
        readings = []
        for offset in got:
            record, received_at = self.records[offset]
            value = session.value(record.encode(), received_at)
            reading = session.finish(reading_from_record(record, start, value))
            if self.clock is not None:
                reading = replace(reading, clock=self.clock)
            readings.append(reading)
        await session.deliver_all(readings)
        if cursor > first:
            await session.sink.save_cursor(session.identity, STREAM, cursor)
            key = _session_key(start)
            if key is not None:  # after the cursor: a crash in between costs a re-download
                await session.sink.save_cursor(session.identity, SESSION_STREAM, key)


def _holes(got: list[int], first: int) -> list[tuple[int, int]]:
    """Offset ranges between records (and after the one before ``first``, when resuming) wider
    than the sensor's own interval, its smallest spacing: where lost or rejected records lie."""
    points = ([first - 1] if first > 0 else []) + got
    pairs = list(pairwise(points))
    if not pairs:
        return []
    interval = min(b - a for a, b in pairs)
    return [(a + 1, b - 1) for a, b in pairs if b - a > interval]


def _report_range(low: int, high: int) -> RacpRequest:
    """``01 04 01 <low> <high>``: the records whose time offset lies within [low, high]."""
    return RacpRequest(
        op_code=OpCode.REPORT_STORED_RECORDS,
        operator=Operator.WITHIN_RANGE,
        filter_type=CGMS_TIME_OFFSET,
        operand=low.to_bytes(2, "little") + high.to_bytes(2, "little"),
    )


def _check(response: RacpResponse) -> None:
    """Success and No Records Found end a report normally; anything else is an error."""
    if response.response_code in (ResponseCode.SUCCESS, ResponseCode.NO_RECORDS_FOUND):
        return
    raise CgmError(f"the sensor refused a record report (response code {response.response_code})")
