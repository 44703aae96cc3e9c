"""Date Time (0x2A08): the 7-byte device wall clock embedded in most health measurements.

It carries no time zone (spec §1.4), so it decodes to a *naive* datetime and the zone decision
is left to the driver. Year, month and day may each be 0 (unknown) and real devices send that
(spec §1.4, §12.3), so parts are kept raw and ``to_datetime`` only answers when all are known.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Self

from ._cursor import Reader, Writer

SIZE = 7

# (sub-field, offset inside the struct, lowest, highest); year also allows 0 (unknown).
_RANGES: tuple[tuple[str, int, int, int], ...] = (
    ("Year", 0, 1582, 9999),
    ("Month", 2, 0, 12),
    ("Day", 3, 0, 31),
    ("Hours", 4, 0, 23),
    ("Minutes", 5, 0, 59),
    ("Seconds", 6, 0, 59),
)


@dataclass(frozen=True, slots=True)
class DateTime:
    """Raw Date Time parts; 0 in ``year``/``month``/``day`` means unknown."""

    CHARACTERISTIC: ClassVar[str] = "2A08"

    year: int
    month: int
    day: int
    hours: int
    minutes: int
    seconds: int

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Decode a standalone 0x2A08 value: exactly 7 bytes (a fixed-size value cannot grow)."""
        reader = Reader(data, cls.CHARACTERISTIC)
        value = cls.read(reader, "Date Time")
        reader.expect_end("Date Time")
        return value

    @classmethod
    def read(cls, reader: Reader, field: str) -> Self:
        """Read the struct as ``field`` of an enclosing value (e.g. "Time Stamp").

        Truncation is reported against ``field`` at its start; a bad part is reported as
        ``"<field>.<Part>"`` at that part's own offset, and an impossible calendar date
        (Feb 31) against ``field`` at its start.
        """
        start = reader.offset
        raw = reader.take(SIZE, field)
        value = cls(
            year=int.from_bytes(raw[0:2], "little"),
            month=raw[2],
            day=raw[3],
            hours=raw[4],
            minutes=raw[5],
            seconds=raw[6],
        )
        problem = value._problem()
        if problem is not None:
            part, at, reason = problem
            name = field if part is None else f"{field}.{part}"
            raise reader.error(name, reason, start + at)
        return value

    def write(self, writer: Writer) -> None:
        """Append the 7 bytes; ValueError for a value ``read`` would refuse."""
        self._require_valid()
        writer.u16(self.year)
        for part_value in (self.month, self.day, self.hours, self.minutes, self.seconds):
            writer.u8(part_value)

    def encode(self) -> bytes:
        writer = Writer()
        self.write(writer)
        return writer.to_bytes()

    def to_datetime(self) -> datetime | None:
        """The naive wall-clock time, or None when year, month or day is unknown."""
        if not (self.year and self.month and self.day):
            return None
        return datetime(self.year, self.month, self.day, self.hours, self.minutes, self.seconds)

    @classmethod
    def from_datetime(cls, dt: datetime) -> Self:
        """From a naive wall-clock datetime; sub-second parts are dropped (1 s resolution).

        Aware datetimes are refused: the wire format has no zone, so the caller must decide
        which wall clock the device runs on rather than have it picked silently here.
        """
        if dt.tzinfo is not None:
            raise ValueError("Date Time has no time zone: pass the device's naive wall clock")
        value = cls(dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second)
        value._require_valid()
        return value

    def _require_valid(self) -> None:
        """ValueError (encode side) for what ``read`` would refuse with a DecodeError."""
        problem = self._problem()
        if problem is not None:
            part, _, reason = problem
            raise ValueError(f"Date Time {part or 'date'}: {reason}")

    def _problem(self) -> tuple[str | None, int, str] | None:
        """First invalid part as (part name or None for the whole date, offset, reason)."""
        if (
            1582 <= self.year <= 9999
            and 1 <= self.month <= 12
            and 1 <= self.day <= 28  # a day every month has
            and 0 <= self.hours <= 23
            and 0 <= self.minutes <= 59
            and 0 <= self.seconds <= 59
        ):
            return None  # the usual case, without the general walk below
        parts = (self.year, self.month, self.day, self.hours, self.minutes, self.seconds)
        for (part, at, low, high), v in zip(_RANGES, parts, strict=True):
            if part == "Year" and v == 0:
                continue
            if not low <= v <= high:
                allowed = f"0 or {low}..{high}" if part == "Year" else f"{low}..{high}"
                return part, at, f"out of range {allowed}"
        known = self.year and self.month and self.day
        if known and self.day > calendar.monthrange(self.year, self.month)[1]:
            return None, 0, "day does not exist in that month"
        return None
