"""Blood Pressure Service values: Measurement (0x2A35), Intermediate Cuff Pressure (0x2A36) and
Feature (0x2A49).

Pressures and pulse rate are SFLOATs kept as ``MedFloat`` (mantissa, exponent, special), so the
device's precision survives and a NaN mean arterial pressure (``FF 07``, sent by real monitors,
spec §12.3) stays an explicit marker instead of becoming 2047. The Intermediate Cuff Pressure has
the same layout but a different meaning: only the first SFLOAT (current cuff pressure) is used,
the other two are kept raw for round trips and should be ignored (spec §5.2). It is a separate
class, not a subclass, so a transient cuff reading can never pass for a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum
from typing import ClassVar, Literal, Self

from ._cursor import Reader, Writer
from .date_time import DateTime
from .ieee11073 import MedFloat, Special, read_sfloat, write_sfloat

USER_UNKNOWN = 0xFF

_FLAG_KPA = 0x01
_FLAG_TIMESTAMP = 0x02
_FLAG_PULSE_RATE = 0x04
_FLAG_USER = 0x08
_FLAG_STATUS = 0x10
_FLAGS_RFU = 0xE0

# The value the spec asks devices to put in the two unused ICP fields (spec §5.2).
SFLOAT_NAN = MedFloat(0x07FF, 0, Special.NAN)


class PressureUnit(IntEnum):
    """Flag b0: unit of every pressure field (the pulse rate is always beats per minute)."""

    MMHG = 0
    KPA = 1


class PulseRateRange(IntEnum):
    """Measurement Status b3-b4, one 2-bit code (not two booleans, spec §5.1)."""

    WITHIN_RANGE = 0
    ABOVE_UPPER_LIMIT = 1
    BELOW_LOWER_LIMIT = 2
    RESERVED = 3


_STATUS_BODY_MOVEMENT = 1 << 0
_STATUS_CUFF_TOO_LOOSE = 1 << 1
_STATUS_IRREGULAR_PULSE = 1 << 2
_STATUS_RANGE_SHIFT, _STATUS_RANGE_MASK = 3, 0x3
_STATUS_IMPROPER_POSITION = 1 << 5
_STATUS_RFU = 0xFFC0  # bits 6-15


@dataclass(frozen=True, slots=True, kw_only=True)
class MeasurementStatus:
    """The optional Measurement Status field (uint16), bit by bit."""

    body_movement: bool = False
    cuff_too_loose: bool = False
    irregular_pulse: bool = False
    pulse_rate_range: PulseRateRange = PulseRateRange.WITHIN_RANGE
    improper_position: bool = False
    rfu: int = 0  # bits 6-15, in place, as received (monitors set them, spec §1.1)

    @classmethod
    def from_raw(cls, raw: int) -> Self:
        """Split a 16-bit status word; every pattern is accepted."""
        if not 0 <= raw <= 0xFFFF:
            raise ValueError("Measurement Status is a 16-bit field")
        return cls(
            body_movement=bool(raw & _STATUS_BODY_MOVEMENT),
            cuff_too_loose=bool(raw & _STATUS_CUFF_TOO_LOOSE),
            irregular_pulse=bool(raw & _STATUS_IRREGULAR_PULSE),
            pulse_rate_range=PulseRateRange((raw >> _STATUS_RANGE_SHIFT) & _STATUS_RANGE_MASK),
            improper_position=bool(raw & _STATUS_IMPROPER_POSITION),
            rfu=raw & _STATUS_RFU,
        )

    @property
    def raw(self) -> int:
        """The 16-bit word; ValueError when ``rfu`` strays outside bits 6-15."""
        if self.rfu & ~_STATUS_RFU:
            raise ValueError("Measurement Status rfu may only hold bits 6-15 (mask 0xFFC0)")
        raw = self.rfu | PulseRateRange(self.pulse_rate_range).value << _STATUS_RANGE_SHIFT
        if self.body_movement:
            raw |= _STATUS_BODY_MOVEMENT
        if self.cuff_too_loose:
            raw |= _STATUS_CUFF_TOO_LOOSE
        if self.irregular_pulse:
            raw |= _STATUS_IRREGULAR_PULSE
        if self.improper_position:
            raw |= _STATUS_IMPROPER_POSITION
        return raw


@dataclass(frozen=True, slots=True)
class _Optional:
    """The flag-gated fields both layouts share, in wire order."""

    timestamp: DateTime | None
    pulse_rate: MedFloat | None
    user_id: int | None
    status: MeasurementStatus | None


def _read_optional(reader: Reader, flags: int) -> _Optional:
    timestamp = DateTime.read(reader, "Time Stamp") if flags & _FLAG_TIMESTAMP else None
    pulse_rate = read_sfloat(reader, "Pulse Rate") if flags & _FLAG_PULSE_RATE else None
    user_id = reader.u8("User ID") if flags & _FLAG_USER else None
    status = None
    if flags & _FLAG_STATUS:
        status = MeasurementStatus.from_raw(reader.u16("Measurement Status"))
    return _Optional(timestamp, pulse_rate, user_id, status)


def _flags(unit: PressureUnit, rfu_flags: int, optional: _Optional) -> int:
    flags = PressureUnit(unit).value | rfu_flags
    if optional.timestamp is not None:
        flags |= _FLAG_TIMESTAMP
    if optional.pulse_rate is not None:
        flags |= _FLAG_PULSE_RATE
    if optional.user_id is not None:
        flags |= _FLAG_USER
    if optional.status is not None:
        flags |= _FLAG_STATUS
    return flags


def _encode(
    flags: int, pressures: tuple[MedFloat, MedFloat, MedFloat], optional: _Optional, tail: bytes
) -> bytes:
    """The whole value; ValueError for anything the wire format cannot carry."""
    writer = Writer()
    writer.u8(flags, "Flags")
    for pressure in pressures:
        write_sfloat(writer, pressure)
    if optional.timestamp is not None:
        optional.timestamp.write(writer)
    if optional.pulse_rate is not None:
        write_sfloat(writer, optional.pulse_rate)
    if optional.user_id is not None:
        writer.u8(optional.user_id, "User ID")
    if optional.status is not None:
        writer.u16(optional.status.raw, "Measurement Status")
    writer.extend(tail)
    return writer.to_bytes()


def _check_rfu_flags(rfu_flags: int) -> None:
    if rfu_flags & ~_FLAGS_RFU:
        raise ValueError("rfu_flags may only hold flag bits 5-7 (mask 0xE0)")


def _pressure_unit(unit: PressureUnit) -> Literal["mm[Hg]", "kPa"]:
    return "kPa" if unit == PressureUnit.KPA else "mm[Hg]"


@dataclass(frozen=True, slots=True, kw_only=True)
class BloodPressureMeasurement:
    """One Blood Pressure Measurement indication (0x2A35), raw fields as sent."""

    CHARACTERISTIC: ClassVar[str] = "2A35"

    unit: PressureUnit
    systolic: MedFloat
    diastolic: MedFloat
    mean_arterial_pressure: MedFloat  # real monitors send NaN here
    timestamp: DateTime | None = None
    pulse_rate: MedFloat | None = None
    user_id: int | None = None  # 0xFF = unknown user
    status: MeasurementStatus | None = None
    rfu_flags: int = 0  # flag bits 5-7, in place, as received
    trailing: bytes = b""  # extra bytes after the last flagged field (tolerated, spec §1.1)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        flags = reader.u8("Flags")
        systolic = read_sfloat(reader, "Systolic")
        diastolic = read_sfloat(reader, "Diastolic")
        mean_arterial_pressure = read_sfloat(reader, "Mean Arterial Pressure")
        optional = _read_optional(reader, flags)
        return cls(
            unit=PressureUnit(flags & _FLAG_KPA),
            systolic=systolic,
            diastolic=diastolic,
            mean_arterial_pressure=mean_arterial_pressure,
            timestamp=optional.timestamp,
            pulse_rate=optional.pulse_rate,
            user_id=optional.user_id,
            status=optional.status,
            rfu_flags=flags & _FLAGS_RFU,
            trailing=reader.rest(),
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError for fields the wire format cannot carry."""
        _check_rfu_flags(self.rfu_flags)
        pressures = (self.systolic, self.diastolic, self.mean_arterial_pressure)
        return _encode(self.flags, pressures, self._optional(), self.trailing)

    def _optional(self) -> _Optional:
        return _Optional(self.timestamp, self.pulse_rate, self.user_id, self.status)

    @property
    def flags(self) -> int:
        """The flags byte implied by the fields (equals the received one after decode)."""
        return _flags(self.unit, self.rfu_flags, self._optional())

    @property
    def systolic_value(self) -> Decimal | None:
        """Exact systolic pressure in ``pressure_unit``; None for an SFLOAT special."""
        return self.systolic.value

    @property
    def diastolic_value(self) -> Decimal | None:
        """Exact diastolic pressure in ``pressure_unit``; None for an SFLOAT special."""
        return self.diastolic.value

    @property
    def mean_arterial_pressure_value(self) -> Decimal | None:
        """Exact mean arterial pressure in ``pressure_unit``; None for NaN or another special."""
        return self.mean_arterial_pressure.value

    @property
    def pressure_unit(self) -> Literal["mm[Hg]", "kPa"]:
        """UCUM unit of the three pressures."""
        return _pressure_unit(self.unit)

    @property
    def pulse_rate_value(self) -> Decimal | None:
        """Exact pulse rate in beats per minute; None when absent or special."""
        return None if self.pulse_rate is None else self.pulse_rate.value

    @property
    def pulse_rate_unit(self) -> Literal["/min"]:
        """UCUM unit of ``pulse_rate_value``."""
        return "/min"

    @property
    def user_unknown(self) -> bool:
        """User ID present but 0xFF: the monitor could not tell who was measured."""
        return self.user_id == USER_UNKNOWN


@dataclass(frozen=True, slots=True, kw_only=True)
class IntermediateCuffPressure:
    """One Intermediate Cuff Pressure notification (0x2A36): a transient display value.

    ``unused_diastolic`` and ``unused_mean_arterial_pressure`` are the second and third SFLOATs
    as received (NaN per the spec, 0 on some devices); they carry no meaning.
    """

    CHARACTERISTIC: ClassVar[str] = "2A36"

    unit: PressureUnit
    cuff_pressure: MedFloat
    unused_diastolic: MedFloat = SFLOAT_NAN
    unused_mean_arterial_pressure: MedFloat = SFLOAT_NAN
    timestamp: DateTime | None = None
    pulse_rate: MedFloat | None = None
    user_id: int | None = None  # 0xFF = unknown user
    status: MeasurementStatus | None = None
    rfu_flags: int = 0  # flag bits 5-7, in place, as received
    trailing: bytes = b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        flags = reader.u8("Flags")
        cuff_pressure = read_sfloat(reader, "Current Cuff Pressure")
        unused_diastolic = read_sfloat(reader, "Diastolic (unused)")
        unused_mean_arterial_pressure = read_sfloat(reader, "Mean Arterial Pressure (unused)")
        optional = _read_optional(reader, flags)
        return cls(
            unit=PressureUnit(flags & _FLAG_KPA),
            cuff_pressure=cuff_pressure,
            unused_diastolic=unused_diastolic,
            unused_mean_arterial_pressure=unused_mean_arterial_pressure,
            timestamp=optional.timestamp,
            pulse_rate=optional.pulse_rate,
            user_id=optional.user_id,
            status=optional.status,
            rfu_flags=flags & _FLAGS_RFU,
            trailing=reader.rest(),
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError for fields the wire format cannot carry."""
        _check_rfu_flags(self.rfu_flags)
        pressures = (self.cuff_pressure, self.unused_diastolic, self.unused_mean_arterial_pressure)
        return _encode(self.flags, pressures, self._optional(), self.trailing)

    def _optional(self) -> _Optional:
        return _Optional(self.timestamp, self.pulse_rate, self.user_id, self.status)

    @property
    def flags(self) -> int:
        """The flags byte implied by the fields (equals the received one after decode)."""
        return _flags(self.unit, self.rfu_flags, self._optional())

    @property
    def cuff_pressure_value(self) -> Decimal | None:
        """Exact current cuff pressure in ``pressure_unit``; None for an SFLOAT special."""
        return self.cuff_pressure.value

    @property
    def pressure_unit(self) -> Literal["mm[Hg]", "kPa"]:
        """UCUM unit of ``cuff_pressure_value``."""
        return _pressure_unit(self.unit)

    @property
    def pulse_rate_value(self) -> Decimal | None:
        """Exact pulse rate in beats per minute; None when absent or special."""
        return None if self.pulse_rate is None else self.pulse_rate.value

    @property
    def pulse_rate_unit(self) -> Literal["/min"]:
        """UCUM unit of ``pulse_rate_value``."""
        return "/min"

    @property
    def user_unknown(self) -> bool:
        """User ID present but 0xFF."""
        return self.user_id == USER_UNKNOWN


_FEATURE_BITS = (
    "body_movement_detection",
    "cuff_fit_detection",
    "irregular_pulse_detection",
    "pulse_rate_range_detection",
    "measurement_position_detection",
    "multiple_bonds",
    "e2e_crc",
    "user_data_service",
    "user_facing_time",
)
_FEATURE_RFU = 0xFE00  # bits 9-15


@dataclass(frozen=True, slots=True, kw_only=True)
class BloodPressureFeature:
    """Blood Pressure Feature (0x2A49): what the monitor supports, read once per connection.

    Bits 0-5 are BPS 1.0; bits 6-8 (E2E-CRC, User Data Service, user facing time) are BPS 1.1
    additions known from implementations (spec §5.3).
    """

    CHARACTERISTIC: ClassVar[str] = "2A49"

    body_movement_detection: bool = False
    cuff_fit_detection: bool = False
    irregular_pulse_detection: bool = False
    pulse_rate_range_detection: bool = False
    measurement_position_detection: bool = False
    multiple_bonds: bool = False
    e2e_crc: bool = False
    user_data_service: bool = False
    user_facing_time: bool = False
    rfu: int = 0  # bits 9-15, in place, as received
    trailing: bytes = b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        bits = reader.u16("Blood Pressure Feature")
        return cls(
            body_movement_detection=bool(bits & 1 << 0),
            cuff_fit_detection=bool(bits & 1 << 1),
            irregular_pulse_detection=bool(bits & 1 << 2),
            pulse_rate_range_detection=bool(bits & 1 << 3),
            measurement_position_detection=bool(bits & 1 << 4),
            multiple_bonds=bool(bits & 1 << 5),
            e2e_crc=bool(bits & 1 << 6),
            user_data_service=bool(bits & 1 << 7),
            user_facing_time=bool(bits & 1 << 8),
            rfu=bits & _FEATURE_RFU,
            trailing=reader.rest(),
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError when ``rfu`` strays outside bits 9-15."""
        if self.rfu & ~_FEATURE_RFU:
            raise ValueError("rfu may only hold bits 9-15 (mask 0xFE00)")
        writer = Writer()
        writer.u16(self.bits, "Blood Pressure Feature")
        writer.extend(self.trailing)
        return writer.to_bytes()

    @property
    def bits(self) -> int:
        """The 16-bit feature word (equals the received one after decode)."""
        bits = self.rfu
        for i, name in enumerate(_FEATURE_BITS):
            if getattr(self, name):
                bits |= 1 << i
        return bits
