"""Reader/Writer: little-endian, bounds-checked, errors that name field and offset."""

from __future__ import annotations

import pytest

from drivers.codecs import DecodeError
from drivers.codecs._cursor import Reader, Writer


def test_reads_little_endian_in_sequence() -> None:
    r = Reader(bytes.fromhex("01 3412 563412 78563412 aabb"), "TEST")
    assert r.u8("a") == 0x01
    assert r.u16("b") == 0x1234
    assert r.u24("c") == 0x123456
    assert r.u32("d") == 0x12345678
    assert r.offset == 10
    assert r.remaining == 2
    assert r.rest() == b"\xaa\xbb"
    assert r.remaining == 0
    assert r.rest() == b""


def test_take_returns_bytes_and_advances() -> None:
    r = Reader(bytearray(b"abcdef"), "TEST")
    assert r.take(2, "x") == b"ab"
    assert r.take(0, "y") == b""
    assert r.offset == 2


def test_short_read_names_field_and_offset_without_consuming() -> None:
    r = Reader(bytes.fromhex("01 02"), "2A9D")
    r.u8("Flags")
    with pytest.raises(DecodeError) as info:
        r.u16("Weight")
    err = info.value
    assert (err.characteristic, err.field, err.offset) == ("2A9D", "Weight", 1)
    assert err.reason == "needs 2 bytes, 1 left"
    assert err.payload_hex == "0102"
    assert r.offset == 1  # nothing consumed by the failed read


def test_error_message_never_contains_payload_bytes() -> None:
    payload = bytes.fromhex("0e b0 36")
    with pytest.raises(DecodeError) as info:
        r = Reader(payload, "2A9D")
        r.take(4, "Everything")
    assert payload.hex() not in str(info.value)
    assert str(info.value) == "2A9D: field 'Everything' at offset 0: needs 4 bytes, 3 left"


def test_expect_end_refuses_leftovers() -> None:
    r = Reader(b"\x01\x02", "2A19")
    r.u8("Battery Level")
    with pytest.raises(DecodeError) as info:
        r.expect_end("Battery Level")
    assert (info.value.field, info.value.offset) == ("Battery Level", 1)


def test_negative_take_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        Reader(b"", "TEST").take(-1, "x")


def test_writer_appends_little_endian() -> None:
    w = Writer()
    w.u8(0x01)
    w.u16(0x1234)
    w.u24(0x123456)
    w.u32(0x12345678)
    w.extend(b"\xaa")
    assert w.to_bytes() == bytes.fromhex("01 3412 563412 78563412 aa")
    assert bytes(w) == w.to_bytes()


@pytest.mark.parametrize(
    ("method", "value"),
    [("u8", 256), ("u8", -1), ("u16", 0x10000), ("u24", 1 << 24), ("u32", 1 << 32)],
)
def test_writer_refuses_out_of_range(method: str, value: int) -> None:
    with pytest.raises(ValueError, match="Weight"):
        getattr(Writer(), method)(value, "Weight")
