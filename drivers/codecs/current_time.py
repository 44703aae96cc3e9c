"""Current Time Service values: Current Time (0x2A2B) and Local Time Information (0x2A0F).

The gateway writes Current Time to set a device's clock before pulling records and reads it to
measure drift (spec §10.3), so both directions matter. Current Time is Exact Time 256 (Date Time,
Day of Week, Fractions256, spec §1.4) plus Adjust Reason. Day of Week is kept exactly as sent and
never checked against the date: devices get it wrong (spec §10.3), and a wrong weekday must not
make a good clock unreadable. Local Time Information carries the device's zone as Time Zone
(15-minute steps) plus DST Offset, the two parts CTS adds to UTC to get the local wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import IntEnum
from fractions import Fraction
from typing import ClassVar, Self

from ._cursor import Reader, Writer
from .date_time import DateTime

SIZE = 10
FRACTIONS_PER_SECOND = 256
_MICROSECONDS = 1_000_000


class DayOfWeek(IntEnum):
    """Day of Week codes (spec §1.4): ISO numbering, 0 = unknown; 8-255 are reserved."""

    UNKNOWN = 0
    MONDAY = 1
    TUESDAY = 2
    WEDNESDAY = 3
    THURSDAY = 4
    FRIDAY = 5
    SATURDAY = 6
    SUNDAY = 7


_DAY_CODES = frozenset(day.value for day in DayOfWeek)

_ADJUST_MANUAL = 1 << 0
_ADJUST_EXTERNAL = 1 << 1
_ADJUST_TIME_ZONE = 1 << 2
_ADJUST_DST = 1 << 3
_ADJUST_RFU = 0xF0  # bits 4-7

# (attribute, bit, spec wording), in bit order.
_ADJUST_BITS: tuple[tuple[str, int, str], ...] = (
    ("manual_time_update", _ADJUST_MANUAL, "manual time update"),
    ("external_reference_time_update", _ADJUST_EXTERNAL, "external reference time update"),
    ("change_of_time_zone", _ADJUST_TIME_ZONE, "change of time zone"),
    ("change_of_dst", _ADJUST_DST, "change of DST"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdjustReason:
    """The Adjust Reason flags byte of Current Time: why the clock last changed."""

    manual_time_update: bool = False
    external_reference_time_update: bool = False
    change_of_time_zone: bool = False
    change_of_dst: bool = False
    rfu: int = 0  # bits 4-7, in place, as received

    @classmethod
    def from_raw(cls, raw: int) -> Self:
        """Split the flags byte; every pattern is accepted."""
        if not 0 <= raw <= 0xFF:
            raise ValueError("Adjust Reason is an 8-bit field")
        return cls(
            manual_time_update=bool(raw & _ADJUST_MANUAL),
            external_reference_time_update=bool(raw & _ADJUST_EXTERNAL),
            change_of_time_zone=bool(raw & _ADJUST_TIME_ZONE),
            change_of_dst=bool(raw & _ADJUST_DST),
            rfu=raw & _ADJUST_RFU,
        )

    @property
    def raw(self) -> int:
        """The flags byte; ValueError when ``rfu`` strays outside bits 4-7."""
        if self.rfu & ~_ADJUST_RFU:
            raise ValueError("Adjust Reason rfu may only hold bits 4-7 (mask 0xF0)")
        raw = self.rfu
        for name, bit, _ in _ADJUST_BITS:
            if getattr(self, name):
                raw |= bit
        return raw

    @property
    def reasons(self) -> tuple[str, ...]:
        """Spec wording of the set bits, in bit order ("manual time update", ...)."""
        return tuple(text for name, _, text in _ADJUST_BITS if getattr(self, name))


NO_ADJUSTMENT = AdjustReason()


def _microsecond(fractions256: int) -> int:
    """``fractions256``/256 s in whole microseconds, to the nearest (ties to even)."""
    return round(Fraction(fractions256 * _MICROSECONDS, FRACTIONS_PER_SECOND))


def _fractions256(microsecond: int) -> int:
    """The 1/256 s step holding the middle of ``microsecond``: inverts ``_microsecond`` exactly
    (its error is at most 0.5 us) and never reaches 256, so it cannot spill into the next second.
    """
    return (2 * microsecond + 1) * FRACTIONS_PER_SECOND // (2 * _MICROSECONDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class CurrentTime:
    """Current Time (0x2A2B), exactly 10 octets: the device wall clock with no zone.

    ``day_of_week`` is the raw code (1 = Monday ... 7 = Sunday, 0 = unknown, 8-255 reserved but
    kept); it is whatever the device sent, even when it contradicts the date.
    """

    CHARACTERISTIC: ClassVar[str] = "2A2B"

    date_time: DateTime
    day_of_week: int
    fractions256: int = 0  # 1/256 s units
    adjust_reason: AdjustReason = NO_ADJUSTMENT

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Decode a 10-byte value (a fixed-size value has no room to grow)."""
        reader = Reader(data, cls.CHARACTERISTIC)
        date_time = DateTime.read(reader, "Date Time")
        day_of_week = reader.u8("Day of Week")
        fractions256 = reader.u8("Fractions256")
        adjust_reason = AdjustReason.from_raw(reader.u8("Adjust Reason"))
        reader.expect_end("Current Time")
        return cls(
            date_time=date_time,
            day_of_week=day_of_week,
            fractions256=fractions256,
            adjust_reason=adjust_reason,
        )

    def encode(self) -> bytes:
        """The 10 bytes; ValueError for parts the wire format cannot carry."""
        writer = Writer()
        self.date_time.write(writer)
        writer.u8(self.day_of_week, "Day of Week")
        writer.u8(self.fractions256, "Fractions256")
        writer.u8(self.adjust_reason.raw, "Adjust Reason")
        return writer.to_bytes()

    @property
    def weekday(self) -> DayOfWeek | None:
        """The day as sent (may contradict the date); None for a reserved code (8-255)."""
        return DayOfWeek(self.day_of_week) if self.day_of_week in _DAY_CODES else None

    @property
    def fraction_seconds(self) -> Decimal:
        """``fractions256`` / 256 exactly (``33`` gives ``Decimal('0.12890625')``)."""
        # 1/256 = 390625 x 10^-8, so the quotient needs no rounding context.
        return Decimal(self.fractions256 * 390_625).scaleb(-8)

    def to_datetime(self) -> datetime | None:
        """The naive wall clock with microseconds, or None when year, month or day is unknown.

        A microsecond is 1/1_000_000 s and a fraction 1/256 s, so the microseconds are exact
        only when ``fractions256`` is a multiple of 4; otherwise they are rounded to the nearest
        microsecond (ties to even), at most 0.5 us off. ``from_datetime`` undoes that rounding.
        """
        wall = self.date_time.to_datetime()
        if wall is None:
            return None
        return wall.replace(microsecond=_microsecond(self.fractions256))

    @classmethod
    def from_datetime(cls, dt: datetime, *, adjust_reason: AdjustReason = NO_ADJUSTMENT) -> Self:
        """From a datetime's own wall clock, with the day of week computed from the date.

        An aware datetime contributes its wall clock in its own zone (the zone itself belongs in
        Local Time Information, see ``LocalTimeInformation.from_offset``); convert it with
        ``astimezone`` first to set the device to another zone. Microseconds become the 1/256 s
        step that contains them, so ``from_datetime(ct.to_datetime())`` gives ``ct`` back.
        """
        wall = dt.replace(tzinfo=None)
        return cls(
            date_time=DateTime.from_datetime(wall),
            day_of_week=wall.isoweekday(),
            fractions256=_fractions256(wall.microsecond),
            adjust_reason=adjust_reason,
        )


TIME_ZONE_UNKNOWN = -128
TIME_ZONE_MIN = -48  # UTC-12:00, in 15-minute steps
TIME_ZONE_MAX = 56  # UTC+14:00
_QUARTER_HOUR = timedelta(minutes=15)


class DstOffset(IntEnum):
    """The defined DST Offset codes (spec §1.4), in 15-minute steps; 255 = unknown."""

    STANDARD_TIME = 0
    HALF_AN_HOUR_DAYLIGHT_TIME = 2
    DAYLIGHT_TIME = 4
    DOUBLE_DAYLIGHT_TIME = 8
    UNKNOWN = 255

    @property
    def delta(self) -> timedelta | None:
        """How far DST moves the clock; None for UNKNOWN."""
        return None if self is DstOffset.UNKNOWN else self.value * _QUARTER_HOUR


_DST_CODES = frozenset(code.value for code in DstOffset)


@dataclass(frozen=True, slots=True)
class LocalTimeInformation:
    """Local Time Information (0x2A0F), exactly 2 octets: Time Zone (sint8) + DST Offset (uint8).

    Both parts are kept raw. Time Zone is the standard-time offset from UTC in 15-minute steps
    (-48..+56 defined, -128 unknown, other values reserved); DST Offset is one of the
    ``DstOffset`` codes, other values reserved. Reserved values decode (and round-trip) but give
    no offset.
    """

    CHARACTERISTIC: ClassVar[str] = "2A0F"

    time_zone: int  # sint8, 15-minute steps
    dst_offset: int  # uint8 code

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        value = cls.read(reader)
        reader.expect_end("Local Time Information")
        return value

    @classmethod
    def read(cls, reader: Reader) -> Self:
        """Read the two fields inside an enclosing value (e.g. CGM Session Start Time)."""
        raw_zone = reader.u8("Time Zone")
        time_zone = raw_zone - 0x100 if raw_zone & 0x80 else raw_zone
        return cls(time_zone, reader.u8("DST Offset"))

    def write(self, writer: Writer) -> None:
        """Append the two bytes; ValueError when a part does not fit its field."""
        if not -0x80 <= self.time_zone <= 0x7F:
            raise ValueError("Time Zone does not fit in a signed byte")
        writer.u8(self.time_zone & 0xFF, "Time Zone")
        writer.u8(self.dst_offset, "DST Offset")

    def encode(self) -> bytes:
        writer = Writer()
        self.write(writer)
        return writer.to_bytes()

    @property
    def dst(self) -> DstOffset | None:
        """The DST code; None for a reserved value."""
        return DstOffset(self.dst_offset) if self.dst_offset in _DST_CODES else None

    @property
    def time_zone_known(self) -> bool:
        """Time Zone is a defined offset (neither -128 unknown nor reserved)."""
        return TIME_ZONE_MIN <= self.time_zone <= TIME_ZONE_MAX

    @property
    def standard_offset(self) -> timedelta | None:
        """The zone's standard-time offset from UTC (DST excluded); None when not known."""
        return self.time_zone * _QUARTER_HOUR if self.time_zone_known else None

    def utc_offset(self) -> timedelta | None:
        """Local time minus UTC (Time Zone + DST Offset); None when either part is not known."""
        standard = self.standard_offset
        dst = self.dst
        delta = None if dst is None else dst.delta
        if standard is None or delta is None:
            return None
        return standard + delta

    @classmethod
    def from_offset(cls, offset: timedelta, dst: DstOffset = DstOffset.STANDARD_TIME) -> Self:
        """From a total UTC offset (DST included, as ``datetime.utcoffset()`` gives it).

        ``dst`` says how much of ``offset`` is daylight saving, e.g. ``from_offset(
        timedelta(hours=2), DstOffset.DAYLIGHT_TIME)`` for CEST gives Time Zone +4 (UTC+1).
        ValueError when the standard part is not a whole number of quarter hours within
        UTC-12:00..UTC+14:00, or when ``dst`` is UNKNOWN (the split would be a guess).
        """
        delta = DstOffset(dst).delta
        if delta is None:
            raise ValueError("an unknown DST offset cannot split a UTC offset")
        steps, rest = divmod(offset - delta, _QUARTER_HOUR)
        if rest:
            raise ValueError("Time Zone counts whole 15-minute steps")
        if not TIME_ZONE_MIN <= steps <= TIME_ZONE_MAX:
            raise ValueError(f"Time Zone outside {TIME_ZONE_MIN}..{TIME_ZONE_MAX} quarter hours")
        return cls(steps, DstOffset(dst).value)
