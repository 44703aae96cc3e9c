"""Battery Level (0x2A19): one byte, 0-100 %.

Values 101-255 are reserved (spec §10.2); they are refused rather than clamped, because a
clamped 100 % would be a reading the device never sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from ._cursor import Reader, Writer

_MAX_PERCENT = 100
_RESERVED = f"reserved (valid range 0..{_MAX_PERCENT})"


@dataclass(frozen=True, slots=True)
class BatteryLevel:
    """Battery charge in percent. Exactly one byte: a fixed-size value has no room to grow."""

    CHARACTERISTIC: ClassVar[str] = "2A19"

    percent: int

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        percent = reader.u8("Battery Level")
        if percent > _MAX_PERCENT:
            raise reader.error("Battery Level", _RESERVED, 0)
        reader.expect_end("Battery Level")
        return cls(percent)

    def encode(self) -> bytes:
        if not 0 <= self.percent <= _MAX_PERCENT:
            raise ValueError(f"Battery Level: {_RESERVED}")
        writer = Writer()
        writer.u8(self.percent, "Battery Level")
        return writer.to_bytes()
