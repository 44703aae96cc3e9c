"""Health Thermometer Service values: Temperature Measurement (0x2A1C), Intermediate Temperature
(0x2A1E), Temperature Type (0x2A1D) and Measurement Interval (0x2A21).

The temperature is a 32-bit FLOAT kept as a ``MedFloat``, so 37.60 stays two decimals and a
NaN stays an explicit marker. Temperature type codes 0 and 10-255 are reserved (spec §8.2); they
are kept raw and reported as "reserved" rather than refused, because an unknown body site does not
make the temperature itself wrong. Intermediate Temperature shares the layout but is a separate
class (not a subclass of the measurement), so a transient display value cannot be persisted as
a record by an ``isinstance`` check.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum
from typing import ClassVar, Literal, Self

from ._cursor import Reader, Writer
from .date_time import DateTime
from .ieee11073 import MedFloat, read_float, write_float

_FLAG_FAHRENHEIT = 0x01
_FLAG_TIMESTAMP = 0x02
_FLAG_TYPE = 0x04
_FLAGS_RFU = 0xF8


class TemperatureUnit(IntEnum):
    """Flag b0: unit of the temperature."""

    CELSIUS = 0
    FAHRENHEIT = 1


class TemperatureSite(IntEnum):
    """The defined Temperature Type codes (spec §8.2)."""

    ARMPIT = 1
    BODY = 2
    EAR = 3
    FINGER = 4
    GASTROINTESTINAL_TRACT = 5
    MOUTH = 6
    RECTUM = 7
    TOE = 8
    TYMPANUM = 9


_SITE_TEXT = {
    TemperatureSite.ARMPIT: "armpit",
    TemperatureSite.BODY: "body (general)",
    TemperatureSite.EAR: "ear (usually earlobe)",
    TemperatureSite.FINGER: "finger",
    TemperatureSite.GASTROINTESTINAL_TRACT: "gastro-intestinal tract",
    TemperatureSite.MOUTH: "mouth",
    TemperatureSite.RECTUM: "rectum",
    TemperatureSite.TOE: "toe",
    TemperatureSite.TYMPANUM: "tympanum (ear drum)",
}
_SITE_CODES = frozenset(site.value for site in TemperatureSite)
_RESERVED = "reserved"


def _site(code: int | None) -> TemperatureSite | None:
    if code is None or code not in _SITE_CODES:
        return None
    return TemperatureSite(code)


def _site_text(code: int | None) -> str | None:
    if code is None:
        return None
    site = _site(code)
    return _RESERVED if site is None else _SITE_TEXT[site]


@dataclass(frozen=True, slots=True, kw_only=True)
class _TemperatureLayout:
    """Fields and behaviour shared by 0x2A1C and 0x2A1E; use one of the two subclasses."""

    CHARACTERISTIC: ClassVar[str]

    unit: TemperatureUnit
    temperature: MedFloat
    timestamp: DateTime | None = None
    temperature_type: int | None = None  # raw Temperature Type code (0x2A1D codes)
    rfu_flags: int = 0  # flag bits 3-7, in place, as received
    trailing: bytes = b""  # extra bytes after the last flagged field (tolerated, spec §1.1)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        flags = reader.u8("Flags")
        temperature = read_float(reader, "Temperature")
        timestamp = DateTime.read(reader, "Time Stamp") if flags & _FLAG_TIMESTAMP else None
        temperature_type = reader.u8("Temperature Type") if flags & _FLAG_TYPE else None
        return cls(
            unit=TemperatureUnit(flags & _FLAG_FAHRENHEIT),
            temperature=temperature,
            timestamp=timestamp,
            temperature_type=temperature_type,
            rfu_flags=flags & _FLAGS_RFU,
            trailing=reader.rest(),
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError for fields the wire format cannot carry."""
        if self.rfu_flags & ~_FLAGS_RFU:
            raise ValueError("rfu_flags may only hold flag bits 3-7 (mask 0xF8)")
        writer = Writer()
        writer.u8(self.flags, "Flags")
        write_float(writer, self.temperature)
        if self.timestamp is not None:
            self.timestamp.write(writer)
        if self.temperature_type is not None:
            writer.u8(self.temperature_type, "Temperature Type")
        writer.extend(self.trailing)
        return writer.to_bytes()

    @property
    def flags(self) -> int:
        """The flags byte implied by the fields (equals the received one after decode)."""
        flags = TemperatureUnit(self.unit).value | self.rfu_flags
        if self.timestamp is not None:
            flags |= _FLAG_TIMESTAMP
        if self.temperature_type is not None:
            flags |= _FLAG_TYPE
        return flags

    @property
    def temperature_value(self) -> Decimal | None:
        """Exact temperature in ``temperature_unit``; None for a FLOAT special (NaN, ...)."""
        return self.temperature.value

    @property
    def temperature_unit(self) -> Literal["Cel", "[degF]"]:
        """UCUM unit of ``temperature_value``."""
        return "[degF]" if self.unit == TemperatureUnit.FAHRENHEIT else "Cel"

    @property
    def site(self) -> TemperatureSite | None:
        """Where the temperature was taken; None when absent or a reserved code."""
        return _site(self.temperature_type)

    @property
    def temperature_type_text(self) -> str | None:
        """Spec wording of the type ("finger"), "reserved", or None when absent."""
        return _site_text(self.temperature_type)


@dataclass(frozen=True, slots=True, kw_only=True)
class TemperatureMeasurement(_TemperatureLayout):
    """One Temperature Measurement indication (0x2A1C), raw fields as sent: a final record."""

    CHARACTERISTIC: ClassVar[str] = "2A1C"


@dataclass(frozen=True, slots=True, kw_only=True)
class IntermediateTemperature(_TemperatureLayout):
    """One Intermediate Temperature notification (0x2A1E): transient, for display only."""

    CHARACTERISTIC: ClassVar[str] = "2A1E"


@dataclass(frozen=True, slots=True)
class TemperatureType:
    """Temperature Type (0x2A1D): where the thermometer measures. Exactly one byte."""

    CHARACTERISTIC: ClassVar[str] = "2A1D"

    code: int  # 1-9 defined; 0 and 10-255 reserved but kept

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        code = reader.u8("Temperature Type")
        reader.expect_end("Temperature Type")
        return cls(code)

    def encode(self) -> bytes:
        writer = Writer()
        writer.u8(self.code, "Temperature Type")
        return writer.to_bytes()

    @property
    def site(self) -> TemperatureSite | None:
        """The defined site, None for a reserved code."""
        return _site(self.code)

    @property
    def text(self) -> str:
        """Spec wording ("ear (usually earlobe)") or "reserved"."""
        return _RESERVED if self.site is None else _SITE_TEXT[self.site]


@dataclass(frozen=True, slots=True)
class MeasurementInterval:
    """Measurement Interval (0x2A21): seconds between periodic measurements. Exactly 2 bytes."""

    CHARACTERISTIC: ClassVar[str] = "2A21"

    seconds: int  # 0 = no periodic measurement

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        seconds = reader.u16("Measurement Interval")
        reader.expect_end("Measurement Interval")
        return cls(seconds)

    def encode(self) -> bytes:
        writer = Writer()
        writer.u16(self.seconds, "Measurement Interval")
        return writer.to_bytes()

    @property
    def periodic(self) -> bool:
        """False when the interval is 0 (periodic measurement off)."""
        return self.seconds != 0
