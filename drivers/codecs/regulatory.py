"""IEEE 11073-20601 Regulatory Certification Data List (0x2A2A), kept as opaque bytes.

The value is an MDER-encoded reg-cert-data-list (count, length, then entries of authorizing
body, structure type, length, data). MDER is big-endian, yet Wireshark and an Android parser
read the counts little-endian, and the question is unresolved (spec §10.1, §12.1); one Omron
monitor sends 16 zero octets. Interpreting it could put a wrong certification on a device
record, so the bytes are stored exactly and every value decodes. ``describe`` is a
human-readable guess for logs and ``edge decode`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Self

from ._cursor import Reader

_ByteOrder = Literal["big", "little"]

# 11073-20601 AuthBody and the Continua structure types (from memory of the standard, spec [M]).
_AUTH_BODIES = {0: "empty", 1: "IEEE 11073", 2: "Continua", 254: "experimental", 255: "none"}
_AUTH_BODY_CONTINUA = 2
_CONTINUA_VERSION = 1
_CONTINUA_REGULATION = 2
_UNREGULATED = 0x8000  # BITS-16 bit 0 is the most significant bit


@dataclass(frozen=True, slots=True)
class RegulatoryCertificationDataList:
    """The 0x2A2A value, byte for byte; ``decode`` never fails."""

    CHARACTERISTIC: ClassVar[str] = "2A2A"

    raw: bytes

    @classmethod
    def decode(cls, data: bytes) -> Self:
        return cls(Reader(data, cls.CHARACTERISTIC).rest())

    def encode(self) -> bytes:
        return bytes(self.raw)

    def describe(self) -> str:
        """Best-effort reading as a 20601 reg-cert-data-list in either byte order; never raises.

        Says which byte order(s) parse to a well-formed list and what each entry appears to be,
        or that neither does. A guess for people, not data to act on.
        """
        if not self.raw:
            return "empty value"
        big = _parse(self.raw, "big")
        little = _parse(self.raw, "little")
        prefix = "IEEE 11073-20601 reg-cert-data-list"
        if big is not None and big == little:
            return f"{prefix} (same in either byte order): {big}"
        if big is not None and little is not None:
            return f"{prefix}, byte order ambiguous: big-endian {big}; little-endian {little}"
        if big is not None:
            return f"{prefix} (big-endian, MDER): {big}"
        if little is not None:
            return f"{prefix} (little-endian): {little}"
        return (
            f"opaque, {_count(len(self.raw), 'octet')}: not a well-formed reg-cert-data-list "
            "in either byte order"
        )


def _count(n: int, singular: str, plural: str | None = None) -> str:
    """``1 octet``, ``2 octets``."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def _u16(data: bytes, at: int, order: _ByteOrder) -> int:
    return int.from_bytes(data[at : at + 2], order)


def _parse(raw: bytes, order: _ByteOrder) -> str | None:
    """The list described in ``order``, or None unless count, lengths and bytes all agree."""
    if len(raw) < 4:
        return None
    count, length = _u16(raw, 0, order), _u16(raw, 2, order)
    end = 4 + length
    if end > len(raw):
        return None
    body = raw[4:end]
    entries: list[str] = []
    at = 0
    for _ in range(count):
        if at + 4 > len(body):
            return None
        auth_body, structure, size = body[at], body[at + 1], _u16(body, at + 2, order)
        data = body[at + 4 : at + 4 + size]
        if len(data) != size:
            return None
        entries.append(_entry(auth_body, structure, data, order))
        at += 4 + size
    if at != len(body):
        return None
    text = "no entries"
    if entries:
        text = f"{_count(count, 'entry', 'entries')}: " + "; ".join(entries)
    extra = len(raw) - end
    return f"{text}, {_count(extra, 'trailing octet')}" if extra else text


def _entry(auth_body: int, structure: int, data: bytes, order: _ByteOrder) -> str:
    if auth_body == _AUTH_BODY_CONTINUA:
        if structure == _CONTINUA_VERSION:
            version = _continua_version(data, order)
            if version is not None:
                return version
        elif structure == _CONTINUA_REGULATION and len(data) == 2:
            bits = _u16(data, 0, order)
            unregulated = " (unregulated device)" if bits & _UNREGULATED else ""
            return f"Continua regulation bits 0x{bits:04X}{unregulated}"
    body = _AUTH_BODIES.get(auth_body, "reserved")
    return (
        f"authorizing body {auth_body} ({body}) structure {structure}, {_count(len(data), 'octet')}"
    )


def _continua_version(data: bytes, order: _ByteOrder) -> str | None:
    """Major/minor IG version + certified device class list, or None when it does not fit."""
    if len(data) < 6:
        return None
    count, length = _u16(data, 2, order), _u16(data, 4, order)
    if length != 2 * count or len(data) != 6 + length:
        return None
    classes = ", ".join(f"0x{_u16(data, 6 + 2 * i, order):04X}" for i in range(count))
    return f"Continua IG version {data[0]}.{data[1]}, certified device classes [{classes}]"
