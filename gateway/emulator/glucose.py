"""The record memory of an emulated glucose meter, served through the Record Access Control Point.

A GLS meter does not push its readings: it keeps numbered records, and a collector asks for them
over RACP (0x2A52). Records come back as *notifications* (0x2A18, then 0x2A34 when the record has
a context), which nothing confirms, and the procedure ends with an indicated Response Code. This
module plays the meter's side of that conversation with the codecs' ``encode``, including what
makes the gateway's side hard: one procedure at a time (0xFE otherwise), indications required on
the control point (0xFD otherwise), and notifications lost on the air (``lose_once``), so the
gateway has to notice the gap in sequence numbers and ask again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from bumble import att, core
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue

from drivers import uuids
from drivers.codecs.date_time import DateTime
from drivers.codecs.glucose import (
    ConcentrationUnit,
    GlucoseFeature,
    GlucoseMeasurement,
    GlucoseMeasurementContext,
    GlucoseSensorStatus,
)
from drivers.codecs.ieee11073 import MedFloat
from drivers.codecs.racp import OpCode, Operator, RacpRequest, RacpResponse, ResponseCode
from firmware_profiles import EmulatedReading

log = logging.getLogger(__name__)

_CCCD = core.UUID.from_16_bits(0x2902)
# mg/dL -> kg/L is 1e-5, mmol/L -> mol/L is 1e-3: the SFLOAT exponent carries it exactly.
_SCALE = {"mg/dL": -5, "mmol/L": -3}


@dataclass(frozen=True, slots=True)
class GlucoseRecord:
    sequence: int
    measurement: bytes
    context: bytes | None


def encode_record(reading: EmulatedReading, sequence: int) -> GlucoseRecord:
    """The bytes a meter notifies for one stored record (raw readings verbatim, no context)."""
    if reading.raw is not None:
        return GlucoseRecord(sequence, bytes.fromhex(reading.raw), None)
    assert reading.glucose is not None and reading.time is not None
    value = MedFloat.from_decimal(reading.glucose, short=True)
    if value.special is None:
        value = MedFloat.from_decimal(
            reading.glucose.scaleb(_SCALE[reading.glucose_units]), short=True
        )
    measurement = GlucoseMeasurement(
        sequence_number=sequence,
        base_time=DateTime.from_datetime(datetime.fromisoformat(reading.time)),
        time_offset=reading.time_offset,
        unit=ConcentrationUnit.MOL_PER_L
        if reading.glucose_units == "mmol/L"
        else ConcentrationUnit.KG_PER_L,
        concentration=value,
        sample_type_code=1 if reading.sample_type is None else reading.sample_type,
        sample_location_code=1 if reading.sample_location is None else reading.sample_location,
        sensor_status=(
            GlucoseSensorStatus.from_raw(reading.annunciation)
            if reading.annunciation is not None
            else None
        ),
        context_follows=reading.has_context,
    )
    context = None
    if reading.has_context:
        both = reading.tester is not None or reading.health is not None
        context = GlucoseMeasurementContext(
            sequence_number=sequence,
            meal_code=reading.meal,
            tester_code=(reading.tester if reading.tester is not None else 15) if both else None,
            health_code=(reading.health if reading.health is not None else 15) if both else None,
        ).encode()
    return GlucoseRecord(sequence, measurement.encode(), context)


class GlucoseMemory:
    """Records by sequence number, and the RACP server that hands them out."""

    def __init__(
        self,
        readings: list[EmulatedReading],
        *,
        lose_once: list[int] | tuple[int, ...] = (),
        pace: float = 0.0,
    ) -> None:
        self.records: dict[int, GlucoseRecord] = {}
        for index, reading in enumerate(readings):
            sequence = reading.sequence if reading.sequence is not None else index
            self.records[sequence] = encode_record(reading, sequence)
        self.lose_once = set(lose_once)
        self.pace = pace  # seconds between records (0: as fast as the link goes)
        self.delivered: set[int] = set()  # sent in a procedure that completed with Success
        self.procedures: list[bytes] = []  # every request received, for tests and diagnostics
        self.answered = 0  # requests answered with success in the current connection
        self.on_complete: Callable[[], None] = lambda: None
        self._device: Device | None = None
        self._running: asyncio.Task[None] | None = None
        self.measurement: Characteristic[bytes] = Characteristic(
            core.UUID.from_16_bits(int(uuids.GLUCOSE_MEASUREMENT, 16)),
            Characteristic.Properties.NOTIFY,
            Characteristic.READABLE,
            CharacteristicValue(read=lambda _connection: b""),
        )
        self.context: Characteristic[bytes] = Characteristic(
            core.UUID.from_16_bits(int(uuids.GLUCOSE_MEASUREMENT_CONTEXT, 16)),
            Characteristic.Properties.NOTIFY,
            Characteristic.READABLE,
            CharacteristicValue(read=lambda _connection: b""),
        )
        self.control_point: Characteristic[bytes] = Characteristic(
            core.UUID.from_16_bits(int(uuids.RECORD_ACCESS_CONTROL_POINT, 16)),
            Characteristic.Properties.WRITE | Characteristic.Properties.INDICATE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self._on_write),
        )

    @property
    def total(self) -> int:
        return len(self.records)

    def characteristics(self, feature: GlucoseFeature) -> list[Characteristic[bytes]]:
        feature_value = Characteristic(
            core.UUID.from_16_bits(int(uuids.GLUCOSE_FEATURE, 16)),
            Characteristic.Properties.READ,
            Characteristic.READABLE,
            feature.encode(),
        )
        return [self.measurement, self.context, feature_value, self.control_point]

    def bind(self, device: Device, *, encrypted: bool, authenticated: bool) -> None:
        """After ``add_services``: demand security on the record path, as GLS meters do."""
        self._device = device
        if not encrypted:
            return
        extra = att.Attribute.WRITE_REQUIRES_ENCRYPTION
        if authenticated:
            extra |= att.Attribute.WRITE_REQUIRES_AUTHENTICATION
        self.control_point.permissions |= extra
        for characteristic in (self.measurement, self.context, self.control_point):
            descriptor = device.gatt_server.get_descriptor_attribute(
                core.UUID.from_16_bits(int(uuids.GLUCOSE_SERVICE, 16)), characteristic.uuid, _CCCD
            )
            assert descriptor is not None, "bumble adds a CCCD to every notifying characteristic"
            descriptor.permissions |= extra

    def on_disconnection(self) -> None:
        if self._running is not None:
            self._running.cancel()
            self._running = None

    # -- the control point ---------------------------------------------------------------------
    def _on_write(self, connection: Connection, value: bytes) -> None:
        if not self._indications_enabled(connection):
            raise att.ATT_Error(0xFD)  # CCCD improperly configured: indications first
        try:
            request = RacpRequest.decode(bytes(value))
        except ValueError:
            request = None
        self.procedures.append(bytes(value))
        running = self._running is not None and not self._running.done()
        aborting = request is not None and request.op == OpCode.ABORT_OPERATION
        if running and not aborting:
            raise att.ATT_Error(0xFE)  # Procedure Already In Progress
        if running and self._running is not None:
            self._running.cancel()  # Abort: the only request accepted while one runs
        self._start(self._answer(connection, request, bytes(value)))

    def _start(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the link went away mid-procedure
                log.debug("emulated meter procedure ended: %s", exc)

        self._running = asyncio.get_running_loop().create_task(run())

    def _indications_enabled(self, connection: Connection) -> bool:
        assert self._device is not None
        cccds = self._device.gatt_server.subscribers.get(connection, {})
        return bool(cccds.get(self.control_point.handle, b"\x00\x00")[0] & 0x02)

    async def _answer(
        self, connection: Connection, request: RacpRequest | None, raw: bytes
    ) -> None:
        if request is None:
            code = raw[0] if raw else 0
            await self._respond(connection, RacpResponse.result(code, ResponseCode.INVALID_OPERAND))
            return
        op = request.op
        if op == OpCode.ABORT_OPERATION:
            await self._respond(
                connection, RacpResponse.result(request.op_code, ResponseCode.SUCCESS)
            )
            return
        if op not in (OpCode.REPORT_STORED_RECORDS, OpCode.REPORT_NUMBER_OF_STORED_RECORDS):
            await self._respond(
                connection, RacpResponse.result(request.op_code, ResponseCode.OP_CODE_NOT_SUPPORTED)
            )
            return
        selected = self._select(request)
        if isinstance(selected, ResponseCode):
            await self._respond(connection, RacpResponse.result(request.op_code, selected))
            return
        if op == OpCode.REPORT_NUMBER_OF_STORED_RECORDS:
            await self._respond(connection, RacpResponse.count(len(selected)))
            self.answered += 1
            return
        if not selected:
            await self._respond(
                connection, RacpResponse.result(request.op_code, ResponseCode.NO_RECORDS_FOUND)
            )
            return
        await self._report(connection, selected)
        await self._respond(connection, RacpResponse.result(request.op_code, ResponseCode.SUCCESS))
        self.delivered.update(selected)
        self.answered += 1
        self.on_complete()

    def _select(self, request: RacpRequest) -> list[int] | ResponseCode:
        sequences = sorted(self.records)
        operator = request.operator_kind
        if operator is None or operator == Operator.NULL:
            return ResponseCode.INVALID_OPERATOR
        if operator == Operator.ALL_RECORDS:
            return sequences
        if operator == Operator.FIRST_RECORD:
            return sequences[:1]
        if operator == Operator.LAST_RECORD:
            return sequences[-1:]
        if request.filter_type != 0x01:  # only Sequence Number filtering is emulated
            return ResponseCode.OPERAND_NOT_SUPPORTED
        values = request.uint16_values
        if operator == Operator.LESS_THAN_OR_EQUAL:
            return [s for s in sequences if s <= values[0]]
        if operator == Operator.GREATER_THAN_OR_EQUAL:
            return [s for s in sequences if s >= values[0]]
        low, high = values
        if low > high:
            return ResponseCode.INVALID_OPERAND
        return [s for s in sequences if low <= s <= high]

    async def _report(self, connection: Connection, selected: list[int]) -> None:
        assert self._device is not None
        for count, sequence in enumerate(selected, 1):
            record = self.records[sequence]
            if sequence in self.lose_once:
                self.lose_once.discard(sequence)  # this time the radio ate it
            else:
                await self._device.notify_subscriber(
                    connection, self.measurement, record.measurement
                )
                if record.context is not None:
                    await self._device.notify_subscriber(connection, self.context, record.context)
            if self.pace:
                await asyncio.sleep(self.pace)
            elif count % 16 == 0:  # let an Abort or a disconnection in, as a real meter would
                await asyncio.sleep(0)

    async def _respond(self, connection: Connection, response: RacpResponse) -> None:
        assert self._device is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await self._device.indicate_subscriber(
                connection, self.control_point, response.encode()
            )


def default_feature() -> GlucoseFeature:
    return GlucoseFeature(
        low_battery_detection=True,
        sensor_malfunction_detection=True,
        sample_size_detection=True,
        strip_insertion_error_detection=True,
        strip_type_error_detection=True,
        result_high_low_detection=True,
        time_fault=True,
    )
