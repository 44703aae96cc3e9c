"""Weight Scale Service values: Weight Measurement (0x2A9D) and Weight Scale Feature (0x2A9E).

Raw integers are kept next to the exact computed values so that ``encode(decode(x)) == x`` and
provenance survives. The weight LSB is fixed by the units flag (0.005 kg / 0.01 lb, spec §3.1);
the Feature's resolution is display granularity, not a scale factor — scaling by it (as one
library does) turns a 65.70 kg capture into nonsense.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum
from typing import ClassVar, Literal, Self

from ._cursor import Reader, Writer
from .date_time import DateTime

WEIGHT_UNSUCCESSFUL = 0xFFFF
USER_UNKNOWN = 0xFF

_FLAG_IMPERIAL = 0x01
_FLAG_TIMESTAMP = 0x02
_FLAG_USER = 0x04
_FLAG_BMI_HEIGHT = 0x08  # one bit for both fields (spec §3.1 pitfall)
_FLAGS_RFU = 0xF0
# resolutions (spec §3.1): SI 5 g and 1 mm, imperial 0.01 lb and 0.1 in, BMI 0.1 either way
_WEIGHT_LSB = {False: Decimal("0.005"), True: Decimal("0.01")}  # by "imperial"
_HEIGHT_LSB = {False: Decimal("0.001"), True: Decimal("0.1")}
_BMI_LSB = Decimal("0.1")


class Units(IntEnum):
    """Flag b0: which fixed LSBs apply to weight and height."""

    SI = 0
    IMPERIAL = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightMeasurement:
    """One Weight Measurement indication (0x2A9D), raw fields as sent."""

    CHARACTERISTIC: ClassVar[str] = "2A9D"

    units: Units
    weight_raw: int  # 0xFFFF = measurement unsuccessful
    timestamp: DateTime | None = None
    user_id: int | None = None  # 0xFF = unknown user
    bmi_raw: int | None = None
    height_raw: int | None = None
    rfu_flags: int = 0  # flag bits 4-7, in place, as received (vendors use them, spec §12.12)
    trailing: bytes = b""  # extra bytes after the last flagged field (tolerated, spec §1.1)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        flags = reader.u8("Flags")
        weight_raw = reader.u16("Weight")
        timestamp = DateTime.read(reader, "Time Stamp") if flags & _FLAG_TIMESTAMP else None
        user_id = reader.u8("User ID") if flags & _FLAG_USER else None
        bmi_raw = height_raw = None
        if flags & _FLAG_BMI_HEIGHT:
            bmi_raw = reader.u16("BMI")
            height_raw = reader.u16("Height")
        return cls(
            units=Units(flags & _FLAG_IMPERIAL),
            weight_raw=weight_raw,
            timestamp=timestamp,
            user_id=user_id,
            bmi_raw=bmi_raw,
            height_raw=height_raw,
            rfu_flags=flags & _FLAGS_RFU,
            trailing=reader.rest(),
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError for fields the wire format cannot carry."""
        if (self.bmi_raw is None) != (self.height_raw is None):
            raise ValueError("BMI and Height share one flag: set both or neither")
        if self.rfu_flags & ~_FLAGS_RFU:
            raise ValueError("rfu_flags may only hold flag bits 4-7 (mask 0xF0)")
        writer = Writer()
        writer.u8(self.flags, "Flags")
        writer.u16(self.weight_raw, "Weight")
        if self.timestamp is not None:
            self.timestamp.write(writer)
        if self.user_id is not None:
            writer.u8(self.user_id, "User ID")
        if self.bmi_raw is not None and self.height_raw is not None:
            writer.u16(self.bmi_raw, "BMI")
            writer.u16(self.height_raw, "Height")
        writer.extend(self.trailing)
        return writer.to_bytes()

    @property
    def flags(self) -> int:
        """The flags byte implied by the fields (equals the received one after decode)."""
        flags = Units(self.units).value | self.rfu_flags
        if self.timestamp is not None:
            flags |= _FLAG_TIMESTAMP
        if self.user_id is not None:
            flags |= _FLAG_USER
        if self.bmi_raw is not None or self.height_raw is not None:
            flags |= _FLAG_BMI_HEIGHT
        return flags

    @property
    def unsuccessful(self) -> bool:
        """The scale reported a failed measurement (weight 0xFFFF)."""
        return self.weight_raw == WEIGHT_UNSUCCESSFUL

    @property
    def user_unknown(self) -> bool:
        """User ID present but 0xFF: the scale could not tell who stood on it."""
        return self.user_id == USER_UNKNOWN

    @property
    def weight(self) -> Decimal | None:
        """Exact weight in ``weight_unit``; None when the measurement was unsuccessful."""
        if self.unsuccessful:
            return None
        return self.weight_raw * _WEIGHT_LSB[self.units == Units.IMPERIAL]

    @property
    def weight_unit(self) -> Literal["kg", "[lb_av]"]:
        """UCUM unit of ``weight``."""
        return "[lb_av]" if self.units == Units.IMPERIAL else "kg"

    @property
    def bmi(self) -> Decimal | None:
        """Exact BMI in kg/m2 (0.1 resolution whatever the units flag), None when absent."""
        return None if self.bmi_raw is None else self.bmi_raw * _BMI_LSB

    @property
    def bmi_unit(self) -> Literal["kg/m2"]:
        """UCUM unit of ``bmi``."""
        return "kg/m2"

    @property
    def height(self) -> Decimal | None:
        """Exact height in ``height_unit``, None when absent."""
        if self.height_raw is None:
            return None
        return self.height_raw * _HEIGHT_LSB[self.units == Units.IMPERIAL]

    @property
    def height_unit(self) -> Literal["m", "[in_i]"]:
        """UCUM unit of ``height``."""
        return "[in_i]" if self.units == Units.IMPERIAL else "m"


# Spec §3.2 tables A and B; codes past the end are reserved.
_WEIGHT_RESOLUTIONS = (
    "not specified",
    "0.5 kg / 1 lb",
    "0.2 kg / 0.5 lb",
    "0.1 kg / 0.2 lb",
    "0.05 kg / 0.1 lb",
    "0.02 kg / 0.05 lb",
    "0.01 kg / 0.02 lb",
    "0.005 kg / 0.01 lb",
)
_HEIGHT_RESOLUTIONS = (
    "not specified",
    "0.01 m / 1 in",
    "0.005 m / 0.5 in",
    "0.001 m / 0.1 in",
)
_RESERVED = "reserved"

_BIT_TIMESTAMP = 1 << 0
_BIT_MULTIPLE_USERS = 1 << 1
_BIT_BMI = 1 << 2
_WEIGHT_RES_SHIFT, _WEIGHT_RES_MASK = 3, 0xF
_HEIGHT_RES_SHIFT, _HEIGHT_RES_MASK = 7, 0x7
_RFU_MASK = 0xFFFFFC00  # bits 10-31


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightScaleFeature:
    """Weight Scale Feature (0x2A9E): what the scale can send, read once per connection."""

    CHARACTERISTIC: ClassVar[str] = "2A9E"

    timestamp_supported: bool
    multiple_users_supported: bool
    bmi_supported: bool
    weight_resolution: int  # table A code (bits 3-6)
    height_resolution: int  # table B code (bits 7-9)
    rfu: int = 0  # bits 10-31, in place, as received
    trailing: bytes = b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        bits = reader.u32("Weight Scale Feature")
        return cls(
            timestamp_supported=bool(bits & _BIT_TIMESTAMP),
            multiple_users_supported=bool(bits & _BIT_MULTIPLE_USERS),
            bmi_supported=bool(bits & _BIT_BMI),
            weight_resolution=(bits >> _WEIGHT_RES_SHIFT) & _WEIGHT_RES_MASK,
            height_resolution=(bits >> _HEIGHT_RES_SHIFT) & _HEIGHT_RES_MASK,
            rfu=bits & _RFU_MASK,
            trailing=reader.rest(),
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError when a field does not fit its bits."""
        if not 0 <= self.weight_resolution <= _WEIGHT_RES_MASK:
            raise ValueError("weight_resolution is a 4-bit code (0..15)")
        if not 0 <= self.height_resolution <= _HEIGHT_RES_MASK:
            raise ValueError("height_resolution is a 3-bit code (0..7)")
        if self.rfu & ~_RFU_MASK:
            raise ValueError("rfu may only hold bits 10-31 (mask 0xFFFFFC00)")
        bits = self.rfu
        bits |= self.weight_resolution << _WEIGHT_RES_SHIFT
        bits |= self.height_resolution << _HEIGHT_RES_SHIFT
        if self.timestamp_supported:
            bits |= _BIT_TIMESTAMP
        if self.multiple_users_supported:
            bits |= _BIT_MULTIPLE_USERS
        if self.bmi_supported:
            bits |= _BIT_BMI
        writer = Writer()
        writer.u32(bits, "Weight Scale Feature")
        writer.extend(self.trailing)
        return writer.to_bytes()

    @property
    def weight_resolution_text(self) -> str:
        """Display granularity from table A, e.g. "0.5 kg / 1 lb" (not a scale factor)."""
        return _table_text(_WEIGHT_RESOLUTIONS, self.weight_resolution)

    @property
    def height_resolution_text(self) -> str:
        """Display granularity from table B, e.g. "0.01 m / 1 in"."""
        return _table_text(_HEIGHT_RESOLUTIONS, self.height_resolution)


def _table_text(table: tuple[str, ...], code: int) -> str:
    return table[code] if 0 <= code < len(table) else _RESERVED
