"""Date Time (0x2A08): unknown parts, range checks per sub-field, impossible dates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given

from drivers.codecs import DateTime, DecodeError, WeightMeasurement
from drivers.codecs._cursor import Reader, Writer

from .strategies import date_times


def test_hand_computed_value() -> None:
    # 0x07EA = 2026, then 8, 22 (0x16), 08:42:36 (0x2A, 0x24)
    dt = DateTime.decode(bytes.fromhex("ea 07 08 16 08 2a 24"))
    assert dt == DateTime(2026, 8, 22, 8, 42, 36)
    assert dt.to_datetime() == datetime(2026, 8, 22, 8, 42, 36)
    assert dt.to_datetime().tzinfo is None  # type: ignore[union-attr]
    assert dt.encode() == bytes.fromhex("ea 07 08 16 08 2a 24")


@pytest.mark.parametrize(
    ("hex_value", "parts"),
    [
        ("00 00 04 11 0f 33 00", (0, 4, 17, 15, 51, 0)),  # year unknown (Nordic BP test style)
        ("e2 07 00 11 0f 33 00", (2018, 0, 17, 15, 51, 0)),
        ("e2 07 04 00 0f 33 00", (2018, 4, 0, 15, 51, 0)),
        ("00 00 00 00 00 00 00", (0, 0, 0, 0, 0, 0)),
        ("00 00 02 1f 00 00 00", (0, 2, 31, 0, 0, 0)),  # Feb 31 of an unknown year: not checkable
    ],
)
def test_unknown_parts_decode_but_give_no_datetime(hex_value: str, parts: tuple[int, ...]) -> None:
    dt = DateTime.decode(bytes.fromhex(hex_value))
    assert dt == DateTime(*parts)
    assert dt.to_datetime() is None
    assert dt.encode() == bytes.fromhex(hex_value)


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("2d 06 01 01 00 00 00", "Date Time.Year", 0),  # 1581: before the Gregorian floor
        ("10 27 01 01 00 00 00", "Date Time.Year", 0),  # 10000
        ("e2 07 0d 01 00 00 00", "Date Time.Month", 2),
        ("e2 07 01 20 00 00 00", "Date Time.Day", 3),
        ("e2 07 01 01 18 00 00", "Date Time.Hours", 4),
        ("e2 07 01 01 00 3c 00", "Date Time.Minutes", 5),
        ("e2 07 01 01 00 00 3c", "Date Time.Seconds", 6),
        ("e2 07 02 1f 00 00 00", "Date Time", 0),  # 2018-02-31
        ("e7 07 02 1d 00 00 00", "Date Time", 0),  # 2023-02-29
        ("e2 07 04 1f 00 00 00", "Date Time", 0),  # 2018-04-31
        ("e2 07 04 11 0f 33", "Date Time", 0),  # truncated: the struct is reported whole
        ("", "Date Time", 0),
        ("e2 07 04 11 0f 33 00 00", "Date Time", 7),  # fixed size: trailing byte refused
    ],
)
def test_invalid_values_name_the_sub_field(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        DateTime.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A08",
        field,
        offset,
    )


def test_leap_day_is_valid() -> None:
    assert DateTime.decode(bytes.fromhex("e8 07 02 1d 17 3b 3b")).to_datetime() == datetime(
        2024, 2, 29, 23, 59, 59
    )


def test_embedded_errors_use_the_outer_field_and_absolute_offset() -> None:
    # Weight Measurement with a time stamp at offset 3 whose hours byte (offset 7) is 24.
    with pytest.raises(DecodeError) as info:
        WeightMeasurement.decode(bytes.fromhex("02 8c 3c e2 07 01 01 18 00 00"))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A9D",
        "Time Stamp.Hours",
        7,
    )


def test_read_and_write_embed_in_other_values() -> None:
    r = Reader(bytes.fromhex("aa e2 07 04 11 0f 33 00 bb"), "TEST")
    r.u8("before")
    assert DateTime.read(r, "When") == DateTime(2018, 4, 17, 15, 51, 0)
    assert r.u8("after") == 0xBB
    w = Writer()
    DateTime(2018, 4, 17, 15, 51, 0).write(w)
    assert w.to_bytes() == bytes.fromhex("e2 07 04 11 0f 33 00")


def test_from_datetime_drops_sub_seconds() -> None:
    dt = DateTime.from_datetime(datetime(2024, 2, 29, 23, 59, 58, 999_999))
    assert dt == DateTime(2024, 2, 29, 23, 59, 58)


def test_from_datetime_refuses_aware_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="zone"):
        DateTime.from_datetime(datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="Year"):
        DateTime.from_datetime(datetime(1500, 1, 1))


@pytest.mark.parametrize(
    "bad",
    [
        DateTime(2018, 13, 1, 0, 0, 0),
        DateTime(1000, 1, 1, 0, 0, 0),
        DateTime(2018, 2, 30, 0, 0, 0),
        DateTime(2018, 1, 1, 24, 0, 0),
        DateTime(2018, 1, 1, 0, 0, -1),
    ],
)
def test_encode_refuses_what_decode_would_refuse(bad: DateTime) -> None:
    with pytest.raises(ValueError):
        bad.encode()


@given(date_times())
def test_round_trip(dt: DateTime) -> None:
    data = dt.encode()
    assert len(data) == 7
    assert DateTime.decode(data) == dt
    wall = dt.to_datetime()
    if wall is not None:
        assert DateTime.from_datetime(wall) == dt
