"""Body Composition Service: one Body Composition Measurement record becomes a ``Reading``.

A record longer than one ATT payload arrives as two indications with the Multiple Packet flag
(b12). The driver holds the first, joins it with the second (``merge_packets``) and delivers one
reading whose raw bytes are both packets. A lone half (the next value is not its other half, or
the session ends first) is quarantined as malformed with its bytes, never delivered as a reading:
its key would then be taken and the complete record, sent again, dropped as a duplicate.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from drivers import uuids
from drivers.codecs.body_composition import (
    BodyCompositionFeature,
    BodyCompositionMeasurement,
    merge_packets,
)
from drivers.codecs.errors import DecodeError
from drivers.models import Absent, Quantity, Reading
from drivers.session import MeasurementDriver, Session, Value

KIND = "body-composition"


def reading_from_body_composition(measurement: BodyCompositionMeasurement, value: Value) -> Reading:
    """Turn a decoded (complete) record into a ``Reading``; body fat first, as the primary value."""
    m = measurement
    if m.unsuccessful:
        body_fat = Quantity(name="body-fat", value=None, unit="%", absent=Absent.UNSUCCESSFUL)
    else:
        body_fat = Quantity(name="body-fat", value=m.body_fat, unit="%")
    quantities = [body_fat]
    optional: tuple[tuple[str, Decimal | int | None, str], ...] = (
        ("body-weight", m.weight, m.mass_unit),
        ("body-height", m.height, m.height_unit),
        ("fat-free-mass", m.fat_free_mass, m.mass_unit),
        ("soft-lean-mass", m.soft_lean_mass, m.mass_unit),
        ("body-water-mass", m.body_water_mass, m.mass_unit),
        ("muscle-mass", m.muscle_mass, m.mass_unit),
        ("muscle-percentage", m.muscle_percentage, m.percentage_unit),
        ("impedance", m.impedance, m.impedance_unit),
        ("basal-metabolism", m.basal_metabolism, m.basal_metabolism_unit),
    )
    for name, number, unit in optional:
        if number is not None:
            quantities.append(Quantity(name=name, value=Decimal(number), unit=unit))
    return value.reading(
        kind=KIND,
        characteristic=uuids.BODY_COMPOSITION_MEASUREMENT,
        quantities=quantities,
        timestamp=m.timestamp,
        user_index=m.user_id,
    )


_WIRE_ORDER = (
    "timestamp",
    "user_id",
    "basal_metabolism_raw",
    "muscle_percentage_raw",
    "muscle_mass_raw",
    "fat_free_mass_raw",
    "soft_lean_mass_raw",
    "body_water_mass_raw",
    "impedance_raw",
    "weight_raw",
    "height_raw",
)


def _in_wire_order(first: BodyCompositionMeasurement, second: BodyCompositionMeasurement) -> bool:
    """A server fills the first packet first (fields in wire order): every field of the first
    half comes before every field of the second. A second half followed by the next record's
    first half fails this, where merging them would mix two records."""

    def positions(packet: BodyCompositionMeasurement) -> list[int]:
        return [i for i, name in enumerate(_WIRE_ORDER) if getattr(packet, name) is not None]

    head, tail = positions(first), positions(second)
    return not head or not tail or max(head) < min(tail)


@dataclass(frozen=True, slots=True)
class _Half:
    payload: bytes
    packet: BodyCompositionMeasurement
    received_at: datetime


class BodyCompositionDriver(MeasurementDriver):
    SERVICE = uuids.BODY_COMPOSITION_SERVICE
    MEASUREMENT = uuids.BODY_COMPOSITION_MEASUREMENT
    FEATURE = uuids.BODY_COMPOSITION_FEATURE
    KIND = KIND
    PROFILE_KIND = "body-composition"

    @classmethod
    def to_reading(cls, value: Value) -> Reading:
        """One complete record (``edge decode``); a single packet of a pair is refused."""
        measurement = BodyCompositionMeasurement.decode(value.payload)
        if measurement.multiple_packet:
            raise DecodeError(
                cls.MEASUREMENT, "Flags", 0, "one packet of a multiple-packet record (b12)"
            )
        return reading_from_body_composition(measurement, value)

    @classmethod
    def decode_feature(cls, data: bytes) -> BodyCompositionFeature:
        return BodyCompositionFeature.decode(data)

    async def collect(self, session: Session) -> None:
        activity = asyncio.Event()
        held: list[_Half] = []  # the first packet of a pair, until its other half comes

        async def orphan() -> None:
            half = held.pop()
            error = DecodeError(
                self.MEASUREMENT, "Flags", 0, "multiple-packet record without its other packet"
            )
            await session.malformed(self.MEASUREMENT, half.payload, error)

        async def on_measurement(payload: bytes) -> None:
            activity.set()
            try:
                packet = BodyCompositionMeasurement.decode(payload)
            except DecodeError as exc:
                if held:
                    await orphan()
                await session.malformed(self.MEASUREMENT, payload, exc)
                return
            if not packet.multiple_packet:
                if held:
                    await orphan()
                record, value = packet, session.value(payload)
            elif not held:
                held.append(_Half(payload, packet, session.clock()))
                return
            else:
                first = held[-1]
                try:
                    if not _in_wire_order(first.packet, packet):
                        raise ValueError("the held packet is not the first half of this one")
                    record = merge_packets(first.packet, packet)
                except ValueError:  # not two halves of one record: this one starts a new pair
                    await orphan()
                    held.append(_Half(payload, packet, session.clock()))
                    return
                held.pop()
                value = session.value(first.payload + payload, first.received_at)
            await session.deliver(session.finish(reading_from_body_composition(record, value)))

        await session.connection.subscribe(self.MEASUREMENT, on_measurement)
        await self._wait_until_done(session.connection, activity)
        if held:
            await orphan()
