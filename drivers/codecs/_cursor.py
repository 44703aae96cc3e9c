"""Byte cursors shared by every codec.

Flag-gated layouts have no fixed offsets (spec §1.1, §12.2), so decoders read field by field
from a cursor. Keeping the bounds check here means every truncated value fails the same way: a
``DecodeError`` naming the field that did not fit and the offset where it should have started.
"""

from __future__ import annotations

from .errors import DecodeError


class Reader:
    """Little-endian reads from one characteristic value, tracking the offset."""

    __slots__ = ("_data", "_offset", "characteristic")

    def __init__(self, data: bytes | bytearray | memoryview, characteristic: str) -> None:
        self._data = bytes(data)  # a private copy: bleak hands out mutable bytearrays
        self._offset = 0
        self.characteristic = characteristic

    @property
    def data(self) -> bytes:
        """The whole value being read (kept for ``DecodeError.payload_hex``)."""
        return self._data

    @property
    def offset(self) -> int:
        """Offset of the next unread byte."""
        return self._offset

    @property
    def remaining(self) -> int:
        """How many bytes are left to read."""
        return len(self._data) - self._offset

    def error(self, field: str, reason: str, offset: int | None = None) -> DecodeError:
        """Build a DecodeError for this value (at the current offset unless told otherwise)."""
        at = self._offset if offset is None else offset
        return DecodeError(self.characteristic, field, at, reason, self._data)

    def take(self, n: int, field: str) -> bytes:
        """Consume exactly ``n`` bytes for ``field``, or fail without consuming anything."""
        if n < 0:
            raise ValueError("cannot take a negative number of bytes")
        start = self._offset
        end = start + n
        if end > len(self._data):
            raise self.error(field, f"needs {n} bytes, {self.remaining} left")
        self._offset = end
        return self._data[start:end]

    def uint(self, n: int, field: str) -> int:
        """Consume an ``n``-byte unsigned little-endian integer."""
        start = self._offset
        end = start + n
        if n < 0 or end > len(self._data):
            return int.from_bytes(self.take(n, field), "little")  # take raises the error
        self._offset = end
        return int.from_bytes(self._data[start:end], "little")

    def u8(self, field: str) -> int:
        return self.uint(1, field)

    def u16(self, field: str) -> int:
        return self.uint(2, field)

    def u24(self, field: str) -> int:
        return self.uint(3, field)

    def u32(self, field: str) -> int:
        return self.uint(4, field)

    def rest(self) -> bytes:
        """Consume and return whatever is left (trailing bytes, spec §1.1)."""
        tail = self._data[self._offset :]
        self._offset = len(self._data)
        return tail

    def expect_end(self, field: str) -> None:
        """Refuse leftover bytes, for fixed-size values that have no room to grow."""
        if self.remaining:
            raise self.error(field, f"expected end of value, {self.remaining} bytes left")


class Writer:
    """Little-endian appends that refuse out-of-range numbers instead of wrapping them."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def uint(self, n: int, value: int, field: str = "value") -> None:
        """Append ``value`` as an ``n``-byte unsigned little-endian integer."""
        if not 0 <= value < 1 << (8 * n):
            raise ValueError(f"{field} does not fit in {n} unsigned bytes")
        self._buf += value.to_bytes(n, "little")

    def u8(self, value: int, field: str = "value") -> None:
        self.uint(1, value, field)

    def u16(self, value: int, field: str = "value") -> None:
        self.uint(2, value, field)

    def u24(self, value: int, field: str = "value") -> None:
        self.uint(3, value, field)

    def u32(self, value: int, field: str = "value") -> None:
        self.uint(4, value, field)

    def extend(self, data: bytes) -> None:
        """Append raw bytes (nested structures, trailing bytes)."""
        self._buf += data

    def to_bytes(self) -> bytes:
        return bytes(self._buf)

    def __bytes__(self) -> bytes:
        return self.to_bytes()
