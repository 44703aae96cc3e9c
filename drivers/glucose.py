"""Glucose Service: download a meter's stored records over the Record Access Control Point.

A glucose meter keeps numbered records and sends them only when asked, as *notifications* that
nobody confirms. So the driver (1) pairs first: GLS meters require a bonded, encrypted link;
(2) asks how many records it should get, then for the records from where the last download
stopped (a cursor the sink keeps durably); (3) joins each measurement with the context that
carries the same sequence number; (4) checks what arrived against the count and asks again for
whatever went missing; (5) delivers readings in sequence order and moves the cursor on only after
they were stored. Control-solution results are meter checks and never become patient data.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

from drivers import uuids
from drivers.codecs.errors import DecodeError
from drivers.codecs.glucose import (
    ConcentrationUnit,
    GlucoseFeature,
    GlucoseMeasurement,
    GlucoseMeasurementContext,
    GlucoseSensorStatus,
    GlucoseTester,
    Health,
    Meal,
    SampleLocation,
    SampleType,
)
from drivers.codecs.racp import OpCode, Operator, RacpRequest, RacpResponse, ResponseCode
from drivers.models import Absent, Quantity, Reading
from drivers.session import MeasurementDriver, Session, Value
from gateway.link.base import LinkError

log = logging.getLogger(__name__)

KIND = "blood-glucose"
STREAM = uuids.GLUCOSE_MEASUREMENT  # the cursor's name: one per device
GLS_SEQUENCE_NUMBER = 0x01

SPECIMENS = {
    SampleType.CAPILLARY_WHOLE_BLOOD: "capillary-whole-blood",
    SampleType.CAPILLARY_PLASMA: "capillary-plasma",
    SampleType.VENOUS_WHOLE_BLOOD: "venous-whole-blood",
    SampleType.VENOUS_PLASMA: "venous-plasma",
    SampleType.ARTERIAL_WHOLE_BLOOD: "arterial-whole-blood",
    SampleType.ARTERIAL_PLASMA: "arterial-plasma",
    SampleType.UNDETERMINED_WHOLE_BLOOD: "undetermined-whole-blood",
    SampleType.UNDETERMINED_PLASMA: "undetermined-plasma",
    SampleType.INTERSTITIAL_FLUID: "interstitial-fluid",
}
LOCATIONS = {
    SampleLocation.FINGER: "finger",
    SampleLocation.ALTERNATE_SITE_TEST: "alternate-site",
    SampleLocation.EARLOBE: "earlobe",
}
MEALS = {
    Meal.PREPRANDIAL: "preprandial",
    Meal.POSTPRANDIAL: "postprandial",
    Meal.FASTING: "fasting",
    Meal.CASUAL: "casual",
    Meal.BEDTIME: "bedtime",
}
TESTERS = {
    GlucoseTester.SELF: "self",
    GlucoseTester.HEALTH_CARE_PROFESSIONAL: "health-care-professional",
    GlucoseTester.LAB_TEST: "lab",
}
HEALTH = {
    Health.MINOR_ISSUES: "minor-issues",
    Health.MAJOR_ISSUES: "major-issues",
    Health.DURING_MENSES: "menses",
    Health.UNDER_STRESS: "stress",
    Health.NO_ISSUES: "none",
}
# Sensor Status Annunciation field -> status name (mappers.codes, glucose meter status bits)
STATUS_NAMES = {
    "battery_low": "device-battery-low",
    "sensor_malfunction": "sensor-malfunction",
    "sample_size_insufficient": "sample-size-insufficient",
    "strip_insertion_error": "strip-insertion-error",
    "strip_type_incorrect": "strip-type-incorrect",
    "result_too_high": "result-too-high",
    "result_too_low": "result-too-low",
    "temperature_too_high": "sensor-temperature-too-high",
    "temperature_too_low": "sensor-temperature-too-low",
    "read_interrupted": "read-interrupted",
    "general_device_fault": "general-device-fault",
    "time_fault": "time-fault",
}


def _glucose(measurement: GlucoseMeasurement) -> Quantity:
    molar = measurement.unit == ConcentrationUnit.MOL_PER_L
    unit = "mmol/L" if molar else "mg/dL"
    concentration = measurement.concentration
    if concentration is None:  # the record carries no result (flag b1 clear)
        return Quantity(name="glucose", value=None, unit=unit, absent=Absent.NAN)
    if concentration.special is not None:
        return Quantity(name="glucose", value=None, unit=unit, absent=Absent(concentration.special))
    value = measurement.mmol_per_l if molar else measurement.mg_per_dl
    return Quantity(name="glucose", value=value, unit=unit)


def _context(
    measurement: GlucoseMeasurement, context: GlucoseMeasurementContext | None
) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    specimen = measurement.sample_type
    if specimen in SPECIMENS:
        pairs.append(("specimen", SPECIMENS[specimen]))
    location = measurement.sample_location
    if location in LOCATIONS:
        pairs.append(("sample-location", LOCATIONS[location]))
    if context is not None:
        for key, code, names in (
            ("meal", context.meal, MEALS),
            ("tester", context.tester, TESTERS),
            ("health", context.health, HEALTH),
        ):
            if code in names:
                pairs.append((key, names[code]))  # type: ignore[index]
    return tuple(pairs)


def _status(status: GlucoseSensorStatus | None) -> tuple[str, ...]:
    if status is None:
        return ()
    return tuple(name for attr, name in STATUS_NAMES.items() if getattr(status, attr))


def reading_from_glucose(
    measurement: GlucoseMeasurement,
    context: GlucoseMeasurementContext | None,
    value: Value,
) -> Reading:
    """Turn a decoded record (measurement + its context, if any) into a ``Reading`` (pure)."""
    return value.reading(
        kind=KIND,
        characteristic=uuids.GLUCOSE_MEASUREMENT,
        quantities=[_glucose(measurement)],
        timestamp=measurement.user_facing_time,
        user_index=None,
        sequence=measurement.sequence_number,
        context=_context(measurement, context),
        status=_status(measurement.sensor_status),
    )


class RecordAccessError(LinkError):
    """The meter answered a record-access request with an error, or not at all."""


@dataclass(slots=True)
class _Download:
    """What arrived during one session, by sequence number."""

    measurements: dict[int, tuple[GlucoseMeasurement, bytes, datetime]] = field(
        default_factory=dict
    )
    contexts: dict[int, GlucoseMeasurementContext] = field(default_factory=dict)

    def complete(self, sequence: int) -> bool:
        """The measurement arrived, and so did its context if it announced one."""
        entry = self.measurements.get(sequence)
        if entry is None:
            return False
        return not entry[0].context_follows or sequence in self.contexts


class GlucoseDriver(MeasurementDriver):
    SERVICE = uuids.GLUCOSE_SERVICE
    MEASUREMENT = uuids.GLUCOSE_MEASUREMENT
    FEATURE = uuids.GLUCOSE_FEATURE
    KIND = KIND
    PROFILE_KIND = "glucose-meter"
    CATEGORY = "glucose"  # consent: patients share glucose with their diabetes team apart

    procedure_timeout = 30.0  # seconds a meter may take to answer one RACP request
    attempts = 3  # downloads of the missing records before giving up until next time

    @classmethod
    def to_reading(cls, value: Value) -> Reading:
        """A lone measurement (``edge decode``); the driver joins the context itself."""
        return reading_from_glucose(GlucoseMeasurement.decode(value.payload), None, value)

    @classmethod
    def decode_feature(cls, data: bytes) -> GlucoseFeature:
        return GlucoseFeature.decode(data)

    async def collect(self, session: Session) -> None:
        connection = session.connection
        await connection.secure()
        meter = _Meter(session, self.procedure_timeout)
        await meter.subscribe()
        start = await session.sink.load_cursor(session.identity, STREAM)
        plan = await meter.plan(start)
        if plan is None:
            return  # nothing new on the meter
        first, expected = plan
        await meter.fetch(first, expected, self.attempts)
        await meter.deliver(first)


class _Meter:
    """One session's conversation with a meter over RACP, and what it sent back."""

    def __init__(self, session: Session, timeout: float) -> None:
        self.session = session
        self.timeout = timeout
        self.download = _Download()
        self.responses: asyncio.Queue[RacpResponse] = asyncio.Queue()

    async def subscribe(self) -> None:
        connection = self.session.connection
        await connection.subscribe(uuids.GLUCOSE_MEASUREMENT, self._on_measurement)
        if connection.has(uuids.GLUCOSE_MEASUREMENT_CONTEXT):
            await connection.subscribe(uuids.GLUCOSE_MEASUREMENT_CONTEXT, self._on_context)
        # Indications on the control point before any request (spec §2: else ATT 0xFD).
        await connection.subscribe(uuids.RECORD_ACCESS_CONTROL_POINT, self._on_response)

    async def _on_measurement(self, payload: bytes) -> None:
        try:
            measurement = GlucoseMeasurement.decode(payload)
        except DecodeError as exc:
            await self.session.malformed(uuids.GLUCOSE_MEASUREMENT, payload, exc)
            return
        received = (measurement, payload, self.session.clock())
        self.download.measurements[measurement.sequence_number] = received

    async def _on_context(self, payload: bytes) -> None:
        try:
            context = GlucoseMeasurementContext.decode(payload)
        except DecodeError as exc:
            await self.session.malformed(uuids.GLUCOSE_MEASUREMENT_CONTEXT, payload, exc)
            return
        self.download.contexts[context.sequence_number] = context

    async def _on_response(self, payload: bytes) -> None:
        try:
            await self.responses.put(RacpResponse.decode(payload))
        except DecodeError as exc:
            await self.session.malformed(uuids.RECORD_ACCESS_CONTROL_POINT, payload, exc)

    async def ask(self, request: RacpRequest) -> RacpResponse:
        """Write one request and wait for the indication that ends it."""
        while not self.responses.empty():  # a late answer to an earlier request
            self.responses.get_nowait()
        connection = self.session.connection
        await connection.write(uuids.RECORD_ACCESS_CONTROL_POINT, request.encode())
        try:
            return await asyncio.wait_for(self.responses.get(), self.timeout)
        except TimeoutError:
            await connection.write(uuids.RECORD_ACCESS_CONTROL_POINT, RacpRequest.abort().encode())
            raise RecordAccessError("the meter did not answer a record request") from None

    async def plan(self, start: int | None) -> tuple[int, int] | None:
        """(first sequence number to fetch, how many records from there on), None if none."""
        if start is not None and start <= 0xFFFF:
            count = _count(
                await self.ask(RacpRequest.number_of_records_greater_or_equal_sequence(start))
            )
            if count:
                return start, count
            # Nothing from the cursor on: up to date, unless the meter was reset or its
            # sequence numbers wrapped, which shows as a newest record below the cursor.
            newest = await self.newest()
            if newest is None or newest >= start - 1:
                return None
            log.warning("meter sequence numbers went backwards: downloading all its records")
        total = _count(await self.ask(RacpRequest.number_of_records_all()))
        if not total:
            return None
        return 0, total

    async def newest(self) -> int | None:
        """The newest record's sequence number, read from the record itself."""
        before = set(self.download.measurements)
        response = await self.ask(RacpRequest.report_last())
        if response.response_code != ResponseCode.SUCCESS:
            return None
        arrived = set(self.download.measurements) - before
        return max(arrived) if arrived else None

    async def fetch(self, first: int, expected: int, attempts: int) -> None:
        """Download from ``first``; ask again for records (or contexts) that did not arrive."""
        _check(await self.ask(RacpRequest.report_greater_or_equal_sequence(first)))
        for _ in range(attempts):
            got = [s for s in self.download.measurements if s >= first]
            missing = _missing(self.download, first, got)
            if len(got) >= expected and not missing:
                return
            if not missing:  # the newest records were lost: only the count says so
                tail = max(got, default=first - 1) + 1
                if tail > 0xFFFF:
                    return
                _check(await self.ask(RacpRequest.report_greater_or_equal_sequence(tail)))
            for sequence in missing:
                _check(await self.ask(_report_one(sequence)))
        log.warning("glucose download still incomplete after %d attempts", attempts)

    async def deliver(self, first: int) -> None:
        """Every complete record in sequence order (one that never arrives whole must not hold
        back the others); the cursor stops before the first hole left, so the holes are asked
        for again next time and the records after them, sent again, deduplicate."""
        session, download = self.session, self.download
        got = sorted(s for s in download.measurements if s >= first)
        missing = set(_missing(download, first, got))
        hole = min(missing) if missing else None
        controls = 0
        cursor = first
        readings = []
        for sequence in got:
            if sequence in missing:
                continue  # incomplete (its context was lost): asked for again next time
            measurement, payload, received_at = download.measurements[sequence]
            if hole is None or sequence < hole:
                cursor = sequence + 1
            if measurement.is_control_solution:
                controls += 1  # a meter check, not the patient's blood
                continue
            reading = reading_from_glucose(
                measurement, download.contexts.get(sequence), session.value(payload, received_at)
            )
            readings.append(session.finish(reading))
        await session.deliver_all(readings)
        session.summary.skipped += controls
        if controls:
            log.info("skipped %d control-solution result(s): not patient data", controls)
        if cursor != first:
            await session.sink.save_cursor(session.identity, STREAM, cursor)


def _report_one(sequence: int) -> RacpRequest:
    """``01 04 01 <seq> <seq>``: the one record ``sequence`` (within an inclusive range)."""
    value = sequence.to_bytes(2, "little")
    return RacpRequest(
        op_code=OpCode.REPORT_STORED_RECORDS,
        operator=Operator.WITHIN_RANGE,
        filter_type=GLS_SEQUENCE_NUMBER,
        operand=value + value,
    )


def _missing(download: _Download, first: int, got: list[int]) -> list[int]:
    """Holes between ``first`` and the newest record received, and records missing a context."""
    if not got:
        return []
    return [s for s in range(first, max(got) + 1) if not download.complete(s)]


def _count(response: RacpResponse) -> int:
    """The count a Number of Stored Records request got; a refusal (say, a meter that wants its
    clock set first) is an error, not "no records"."""
    if response.records is None:
        _check(response)
        return 0
    return response.records


def _check(response: RacpResponse) -> None:
    """Success and No Records Found end a report normally; anything else is an error."""
    if response.response_code in (ResponseCode.SUCCESS, ResponseCode.NO_RECORDS_FOUND):
        return
    raise RecordAccessError(
        f"the meter refused a record report (response code {response.response_code})"
    )
