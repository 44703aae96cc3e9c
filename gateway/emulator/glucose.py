"""The record memory of an emulated glucose meter, served through the Record Access Control Point.

A GLS meter does not push its readings: it keeps numbered records, and a collector asks for them
over RACP (0x2A52). Records come back as *notifications* (0x2A18, then 0x2A34 when the record has
a context), which nothing confirms, and the procedure ends with an indicated Response Code. This
module plays the meter's side of that conversation with the codecs' ``encode``, including what
makes the gateway's side hard: one procedure at a time (0xFE otherwise), indications required on
the control point (0xFD otherwise), both from ``racp_server``, and notifications lost on the air
(``lose_once``), so the gateway has to notice the gap in sequence numbers and ask again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bumble.device import Connection, Device
from bumble.gatt import Characteristic

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
from firmware_profiles import EmulatedReading, FirmwareProfile
from gateway.emulator.racp_server import RacpServer, demand_security, notifying, uuid16

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


class GlucoseMemory(RacpServer):
    """Records by sequence number, served over RACP (``RacpServer``) as measurement + context."""

    def __init__(
        self,
        readings: list[EmulatedReading],
        *,
        lose_once: list[int] | tuple[int, ...] = (),
        pace: float = 0.0,
    ) -> None:
        super().__init__(pace=pace)
        self.records: dict[int, GlucoseRecord] = {}
        for index, reading in enumerate(readings):
            sequence = reading.sequence if reading.sequence is not None else index
            self.records[sequence] = encode_record(reading, sequence)
        self.lose_once = set(lose_once)
        self.measurement = notifying(uuids.GLUCOSE_MEASUREMENT)
        self.context = notifying(uuids.GLUCOSE_MEASUREMENT_CONTEXT)

    @property
    def total(self) -> int:
        return len(self.records)

    @classmethod
    def from_profile(cls, profile: FirmwareProfile) -> GlucoseMemory:
        emulation = profile.emulation
        if emulation is None:
            return cls([])
        return cls(list(emulation.stored), lose_once=emulation.lose_once)

    def characteristics(self, feature: GlucoseFeature | None = None) -> list[Characteristic[bytes]]:
        feature = feature or default_feature()
        feature_value = Characteristic(
            uuid16(uuids.GLUCOSE_FEATURE),
            Characteristic.Properties.READ,
            Characteristic.READABLE,
            feature.encode(),
        )
        return [self.measurement, self.context, feature_value, self.control_point]

    def bind(self, device: Device, *, encrypted: bool, authenticated: bool) -> None:
        """After ``add_services``: demand security on the record path, as GLS meters do."""
        self._device = device
        if encrypted:
            demand_security(
                device,
                uuids.GLUCOSE_SERVICE,
                subscribed=(self.measurement, self.context, self.control_point),
                written=(self.control_point,),
                authenticated=authenticated,
            )

    def keys(self) -> list[int]:
        return sorted(self.records)

    async def send(self, connection: Connection, selected: list[int]) -> None:
        for count, sequence in enumerate(selected, 1):
            record = self.records[sequence]
            if sequence in self.lose_once:
                self.lose_once.discard(sequence)  # this time the radio ate it
            else:
                await self.device.notify_subscriber(
                    connection, self.measurement, record.measurement
                )
                if record.context is not None:
                    await self.device.notify_subscriber(connection, self.context, record.context)
            await self.pause(count)


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
