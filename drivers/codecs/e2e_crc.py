"""The E2E-CRC that CGMS values (and BPS 1.1 records) may carry: CRC-16/MCRF4XX.

The service specification calls it "CRC-CCITT, seed 0xFFFF", which reads like CCITT-FALSE, but
every public vector only verifies with the reflected variant: polynomial 0x1021 processed LSB
first (0x8408), initial value 0xFFFF, no final XOR (spec §1.5). The 16-bit result is sent
little-endian after the octets it covers, so ``"123456789"`` gives 0x6F91 and the CGMS example
``3E 01 .. 09`` gives 0x2F01, sent as ``01 2F``.
"""

from __future__ import annotations

from ._cursor import Reader, Writer

CRC_SIZE = 2
_POLY_REFLECTED = 0x8408
_INIT = 0xFFFF


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _table()


def crc16_mcrf4xx(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MCRF4XX of ``data`` (reflected 0x1021, init 0xFFFF, no final XOR)."""
    crc = _INIT
    for byte in bytes(data):
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc


def append_crc(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` followed by its E2E-CRC, little-endian, as it goes on the wire."""
    covered = bytes(data)
    return covered + crc16_mcrf4xx(covered).to_bytes(CRC_SIZE, "little")


def has_valid_crc(data: bytes | bytearray | memoryview) -> bool:
    """True when the last two octets are the E2E-CRC of everything before them."""
    value = bytes(data)
    if len(value) < CRC_SIZE:
        return False
    received = int.from_bytes(value[-CRC_SIZE:], "little")
    return received == crc16_mcrf4xx(value[:-CRC_SIZE])


def read_crc(reader: Reader, start: int, field: str = "E2E-CRC") -> int:
    """Read the 2-octet CRC at the cursor and check it over the octets from ``start`` to it.

    A mismatch is a ``DecodeError`` at the CRC's own offset: the value was corrupted or forged,
    so none of it may be used (spec §7.1).
    """
    at = reader.offset
    received = reader.u16(field)
    if received != crc16_mcrf4xx(reader.data[start:at]):
        raise reader.error(field, "does not match the computed CRC-16/MCRF4XX", at)
    return received


def write_crc(writer: Writer, start: int = 0, crc: int | None = None) -> None:
    """Append the CRC over what ``writer`` holds from ``start``; a given ``crc`` is written as is.

    Writing a caller's ``crc`` unchanged keeps decoded values byte-exact and lets an emulator
    send a deliberately wrong one.
    """
    value = crc16_mcrf4xx(writer.to_bytes()[start:]) if crc is None else crc
    writer.u16(value, "E2E-CRC")
