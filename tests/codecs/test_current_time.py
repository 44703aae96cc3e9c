"""Current Time (0x2A2B) and Local Time Information (0x2A0F).

Public vectors live in vectors_time_user.json (with their provenance). This module checks the
Current Time vector and the Time Zone / DST Offset part of Nordic's CGM Session Start Time
vector; test_user_data.py checks the User Control Point ones and test_regulatory.py 0x2A2A.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.codecs._cursor import Reader, Writer
from drivers.codecs.current_time import (
    NO_ADJUSTMENT,
    AdjustReason,
    CurrentTime,
    DayOfWeek,
    DstOffset,
    LocalTimeInformation,
)
from drivers.codecs.date_time import DateTime
from drivers.codecs.errors import DecodeError

from .fuzzing import assert_only_decode_errors
from .strategies import date_times

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors_time_user.json").read_text(encoding="utf-8")
)


def vectors(characteristic: str) -> list[dict[str, Any]]:
    return [v for v in VECTORS if v["characteristic"] == characteristic]


def test_vector_file_is_complete_and_keeps_provenance() -> None:
    # 0x2A2B and 0x2AAA are checked here, 0x2A9F in test_user_data, 0x2A2A in test_regulatory.
    counts = {c: len(vectors(c)) for c in ("0x2A2B", "0x2AAA", "0x2A9F", "0x2A2A")}
    assert counts == {"0x2A2B": 1, "0x2AAA": 1, "0x2A9F": 2, "0x2A2A": 1}
    assert len(VECTORS) == sum(counts.values())
    for vector in VECTORS:
        assert vector["source"] and vector["provenance"] in {"literal", "assembled", "derived"}
        assert "uncertain" in vector


@pytest.mark.parametrize("vector", vectors("0x2A2B"), ids=lambda v: v["hex"])
def test_public_current_time_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    ct = CurrentTime.decode(data)
    for key, want in vector["expected"].items():
        if key == "date_time":
            wall = ct.date_time.to_datetime()
            assert wall is not None and wall.isoformat() == want
        elif key == "day_of_week":
            assert ct.weekday is not None
            assert f"{ct.day_of_week} {ct.weekday.name.title()}" == want
        elif key == "fractions256":
            assert ct.fractions256 == want
        elif key == "fraction_s":
            assert ct.fraction_seconds == Decimal("0.12890625")  # exact 33/256
            assert round(ct.fraction_seconds, 3) == Decimal(str(want))
        elif key == "adjust_reason":
            assert list(ct.adjust_reason.reasons) == want
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert ct.encode() == data


def crc16_mcrf4xx(data: bytes) -> int:
    """Reference E2E-CRC (spec §1.5), only to check the vector's CRC key."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def offset_text(offset: timedelta) -> str:
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(offset) // timedelta(minutes=1)
    return f"{sign}{minutes // 60:02}:{minutes % 60:02}"


@pytest.mark.parametrize("vector", vectors("0x2AAA"), ids=lambda v: v["hex"])
def test_cgm_session_start_time_zone_and_dst(vector: dict[str, Any]) -> None:
    # CGM Session Start Time = Date Time + Time Zone + DST Offset + E2E-CRC (spec §7.4). The
    # CGM codec owns the whole value; here it is the only public Time Zone / DST capture, so the
    # embedded 0x2A0F layout is read with LocalTimeInformation.read at offset 7.
    data = bytes.fromhex(vector["hex"])
    reader = Reader(data, "2AAA")
    start = DateTime.read(reader, "Session Start Time")
    local = LocalTimeInformation.read(reader)
    crc = reader.u16("E2E-CRC")
    reader.expect_end("E2E-CRC")
    for key, want in vector["expected"].items():
        if key == "session_start":
            wall = start.to_datetime()
            assert wall is not None and wall.isoformat() == want
        elif key == "time_zone_raw":
            assert local.time_zone == want
        elif key == "time_zone":
            assert local.standard_offset is not None
            assert f"{offset_text(local.standard_offset)} ({local.time_zone} x 15 min)" == want
        elif key == "dst_offset_raw":
            assert local.dst_offset == want
        elif key == "dst_offset":
            assert local.dst is DstOffset.DAYLIGHT_TIME
            assert local.dst.delta is not None
            assert f"+{local.dst.delta / timedelta(hours=1):g} h" == want
        elif key == "e2e_crc":
            assert f"0x{crc:04X} (valid)" == want
            assert crc16_mcrf4xx(data[:9]) == crc
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert local.utc_offset() == timedelta(hours=3)
    assert local.encode() == data[7:9]


# --- Current Time ------------------------------------------------------------------------------

# Hand-computed: 2024-02-29 23:59:58 (E8 07 02 1D 17 3B 3A), Thursday (4), fractions 0x80 = 0.5 s,
# adjust reason 0x0F = manual + external reference + time zone + DST.
LEAP = bytes.fromhex("e807 02 1d 17 3b 3a 04 80 0f")


def test_hand_computed_every_adjust_reason() -> None:
    ct = CurrentTime.decode(LEAP)
    assert ct == CurrentTime(
        date_time=DateTime(2024, 2, 29, 23, 59, 58),
        day_of_week=DayOfWeek.THURSDAY,
        fractions256=128,
        adjust_reason=AdjustReason(
            manual_time_update=True,
            external_reference_time_update=True,
            change_of_time_zone=True,
            change_of_dst=True,
        ),
    )
    assert ct.to_datetime() == datetime(2024, 2, 29, 23, 59, 58, 500_000)
    assert ct.fraction_seconds == Decimal("0.5")
    assert ct.adjust_reason.reasons == (
        "manual time update",
        "external reference time update",
        "change of time zone",
        "change of DST",
    )
    assert ct.encode() == LEAP


def test_wrong_day_of_week_is_kept_not_refused() -> None:
    # 2025-01-01 was a Wednesday; the device says Monday (as in the vector's source tests).
    data = bytes.fromhex("e907 01 01 00 00 00 01 00 00")
    ct = CurrentTime.decode(data)
    assert ct.day_of_week == 1 and ct.weekday is DayOfWeek.MONDAY
    assert ct.to_datetime() == datetime(2025, 1, 1)
    assert ct.encode() == data


@pytest.mark.parametrize(("code", "weekday"), [(0, DayOfWeek.UNKNOWN), (8, None), (0xFF, None)])
def test_unknown_and_reserved_day_codes_are_kept(code: int, weekday: DayOfWeek | None) -> None:
    data = bytes.fromhex("e807 02 1d 17 3b 3a") + bytes([code, 0, 0])
    ct = CurrentTime.decode(data)
    assert (ct.day_of_week, ct.weekday) == (code, weekday)
    assert ct.encode() == data


def test_unknown_date_gives_no_datetime() -> None:
    data = bytes.fromhex("0000 00 00 0c 00 00 00 40 00")
    ct = CurrentTime.decode(data)
    assert ct.date_time == DateTime(0, 0, 0, 12, 0, 0)
    assert ct.to_datetime() is None
    assert ct.fraction_seconds == Decimal("0.25")
    assert ct.encode() == data


@pytest.mark.parametrize(
    ("bit", "name"),
    [
        (0, "manual_time_update"),
        (1, "external_reference_time_update"),
        (2, "change_of_time_zone"),
        (3, "change_of_dst"),
    ],
)
def test_adjust_reason_bits(bit: int, name: str) -> None:
    data = bytes.fromhex("e807 02 1d 17 3b 3a 04 00") + bytes([1 << bit])
    ct = CurrentTime.decode(data)
    assert ct.adjust_reason == AdjustReason(**{name: True})
    assert ct.encode() == data


def test_adjust_reason_rfu_bits_are_kept() -> None:
    data = bytes.fromhex("e807 02 1d 17 3b 3a 04 00 f1")
    ct = CurrentTime.decode(data)
    assert ct.adjust_reason == AdjustReason(manual_time_update=True, rfu=0xF0)
    assert ct.adjust_reason.reasons == ("manual time update",)
    assert ct.encode() == data


def test_every_adjust_reason_byte_round_trips() -> None:
    for raw in range(0x100):
        assert AdjustReason.from_raw(raw).raw == raw


@pytest.mark.parametrize("rfu", [0x01, 0x08, 0x100])
def test_adjust_reason_refuses_rfu_outside_mask(rfu: int) -> None:
    with pytest.raises(ValueError, match="rfu"):
        _ = AdjustReason(rfu=rfu).raw


@pytest.mark.parametrize("raw", [-1, 0x100])
def test_adjust_reason_from_raw_refuses_non_bytes(raw: int) -> None:
    with pytest.raises(ValueError):
        AdjustReason.from_raw(raw)


@pytest.mark.parametrize(
    ("fractions256", "microsecond"),
    [
        (0, 0),
        (64, 250_000),  # multiples of 4 are exact
        (128, 500_000),
        (1, 3_906),  # 3906.25
        (2, 7_812),  # 7812.5: tie, to even
        (6, 23_438),  # 23437.5: tie, to even
        (3, 11_719),  # 11718.75
        (255, 996_094),  # 996093.75
    ],
)
def test_fractions_to_microseconds(fractions256: int, microsecond: int) -> None:
    ct = CurrentTime(
        date_time=DateTime(2024, 1, 1, 0, 0, 0), day_of_week=1, fractions256=fractions256
    )
    wall = ct.to_datetime()
    assert wall is not None and wall.microsecond == microsecond


def test_every_fraction_survives_to_datetime_and_back() -> None:
    for fractions256 in range(256):
        ct = CurrentTime(
            date_time=DateTime(2024, 1, 1, 0, 0, 0), day_of_week=1, fractions256=fractions256
        )
        wall = ct.to_datetime()
        assert wall is not None
        assert CurrentTime.from_datetime(wall) == ct
        assert ct.fraction_seconds * 256 == fractions256


def test_from_datetime_computes_the_day_of_week() -> None:
    ct = CurrentTime.from_datetime(datetime(2024, 3, 31, 2, 30, 15, 250_000))
    assert ct == CurrentTime(
        date_time=DateTime(2024, 3, 31, 2, 30, 15),
        day_of_week=DayOfWeek.SUNDAY,
        fractions256=64,
    )
    assert ct.encode() == bytes.fromhex("e807 03 1f 02 1e 0f 07 40 00")


def test_from_datetime_uses_an_aware_datetime_s_own_wall_clock() -> None:
    cest = timezone(timedelta(hours=2))
    reason = AdjustReason(external_reference_time_update=True)
    ct = CurrentTime.from_datetime(datetime(2024, 7, 1, 9, 0, tzinfo=cest), adjust_reason=reason)
    assert ct.date_time == DateTime(2024, 7, 1, 9, 0, 0)
    assert ct.weekday is DayOfWeek.MONDAY
    assert ct.adjust_reason == reason
    assert ct.encode()[-1] == 0x02


def test_from_datetime_never_spills_into_the_next_second() -> None:
    ct = CurrentTime.from_datetime(datetime(2024, 12, 31, 23, 59, 59, 999_999))
    assert (ct.date_time, ct.fractions256) == (DateTime(2024, 12, 31, 23, 59, 59), 255)


def test_from_datetime_refuses_years_the_wire_cannot_carry() -> None:
    with pytest.raises(ValueError, match="Year"):
        CurrentTime.from_datetime(datetime(1500, 1, 1))


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Date Time", 0),
        ("e807 02 1d 17 3b", "Date Time", 0),
        ("e807 02 1d 17 3b 3a", "Day of Week", 7),
        ("e807 02 1d 17 3b 3a 04", "Fractions256", 8),
        ("e807 02 1d 17 3b 3a 04 80", "Adjust Reason", 9),
        ("e807 02 1d 17 3b 3a 04 80 0f 00", "Current Time", 10),  # fixed size
        ("e807 02 1d 18 3b 3a 04 80 0f", "Date Time.Hours", 4),
        ("e807 0d 1d 17 3b 3a 04 80 0f", "Date Time.Month", 2),
        ("2d06 02 1d 17 3b 3a 04 80 0f", "Date Time.Year", 0),
        ("e707 02 1d 17 3b 3a 04 80 0f", "Date Time", 0),  # 2023-02-29
    ],
)
def test_malformed_current_time(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        CurrentTime.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A2B",
        field,
        offset,
    )
    assert info.value.payload_hex == bytes.fromhex(hex_value).hex()


@pytest.mark.parametrize(
    "bad",
    [
        CurrentTime(date_time=DateTime(2024, 2, 30, 0, 0, 0), day_of_week=1),
        CurrentTime(date_time=DateTime(2024, 1, 1, 0, 0, 0), day_of_week=256),
        CurrentTime(date_time=DateTime(2024, 1, 1, 0, 0, 0), day_of_week=-1),
        CurrentTime(date_time=DateTime(2024, 1, 1, 0, 0, 0), day_of_week=1, fractions256=256),
        CurrentTime(
            date_time=DateTime(2024, 1, 1, 0, 0, 0),
            day_of_week=1,
            adjust_reason=AdjustReason(rfu=1),
        ),
    ],
)
def test_encode_refuses_what_the_wire_cannot_carry(bad: CurrentTime) -> None:
    with pytest.raises(ValueError):
        bad.encode()


adjust_reasons = st.integers(0, 0xFF).map(AdjustReason.from_raw)
current_times = st.builds(
    CurrentTime,
    date_time=date_times(),
    day_of_week=st.integers(0, 0xFF),
    fractions256=st.integers(0, 0xFF),
    adjust_reason=adjust_reasons,
)


@st.composite
def current_time_payloads(draw: st.DrawFn) -> bytes:
    return draw(date_times()).encode() + draw(st.binary(min_size=3, max_size=3))


@given(current_times)
def test_model_round_trip(ct: CurrentTime) -> None:
    data = ct.encode()
    assert len(data) == 10
    assert CurrentTime.decode(data) == ct


@given(current_time_payloads())
def test_bytes_round_trip(data: bytes) -> None:
    assert CurrentTime.decode(data).encode() == data


@given(current_times)
def test_datetime_round_trip_when_the_weekday_is_right(ct: CurrentTime) -> None:
    wall = ct.to_datetime()
    if wall is None:
        return
    again = CurrentTime.from_datetime(wall, adjust_reason=ct.adjust_reason)
    assert again.day_of_week == wall.isoweekday()
    if ct.day_of_week == wall.isoweekday():
        assert again == ct


# --- Local Time Information --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hex_value", "time_zone", "dst", "standard", "utc"),
    [
        ("08 04", 8, DstOffset.DAYLIGHT_TIME, timedelta(hours=2), timedelta(hours=3)),
        ("fc 00", -4, DstOffset.STANDARD_TIME, timedelta(hours=-1), timedelta(hours=-1)),
        ("d0 00", -48, DstOffset.STANDARD_TIME, timedelta(hours=-12), timedelta(hours=-12)),
        ("38 08", 56, DstOffset.DOUBLE_DAYLIGHT_TIME, timedelta(hours=14), timedelta(hours=16)),
        (
            "16 00",
            22,
            DstOffset.STANDARD_TIME,
            timedelta(hours=5, minutes=30),
            timedelta(hours=5.5),
        ),
        (
            "2a 02",
            42,
            DstOffset.HALF_AN_HOUR_DAYLIGHT_TIME,
            timedelta(hours=10.5),
            timedelta(hours=11),
        ),
        ("80 00", -128, DstOffset.STANDARD_TIME, None, None),  # time zone unknown
        ("04 ff", 4, DstOffset.UNKNOWN, timedelta(hours=1), None),  # DST unknown
        ("39 00", 57, DstOffset.STANDARD_TIME, None, None),  # reserved time zone, kept
        ("cf 00", -49, DstOffset.STANDARD_TIME, None, None),
        ("04 01", 4, None, timedelta(hours=1), None),  # reserved DST code, kept
        ("04 10", 4, None, timedelta(hours=1), None),
    ],
)
def test_local_time_information(
    hex_value: str,
    time_zone: int,
    dst: DstOffset | None,
    standard: timedelta | None,
    utc: timedelta | None,
) -> None:
    data = bytes.fromhex(hex_value)
    info = LocalTimeInformation.decode(data)
    assert (info.time_zone, info.dst) == (time_zone, dst)
    assert info.standard_offset == standard
    assert info.time_zone_known is (standard is not None)
    assert info.utc_offset() == utc
    assert info.encode() == data


def test_dst_codes_are_quarter_hours() -> None:
    assert [code.delta for code in DstOffset] == [
        timedelta(0),
        timedelta(minutes=30),
        timedelta(hours=1),
        timedelta(hours=2),
        None,
    ]


@pytest.mark.parametrize(
    ("offset", "dst", "time_zone"),
    [
        (timedelta(hours=2), DstOffset.DAYLIGHT_TIME, 4),  # CEST = UTC+1 + 1 h DST
        (timedelta(hours=1), DstOffset.STANDARD_TIME, 4),
        (timedelta(hours=5, minutes=30), DstOffset.STANDARD_TIME, 22),  # India
        (timedelta(hours=5, minutes=45), DstOffset.STANDARD_TIME, 23),  # Nepal
        (timedelta(hours=11), DstOffset.HALF_AN_HOUR_DAYLIGHT_TIME, 42),  # Lord Howe summer
        (timedelta(hours=-4), DstOffset.DAYLIGHT_TIME, -20),  # EDT
        (timedelta(hours=-12), DstOffset.STANDARD_TIME, -48),
        (timedelta(hours=16), DstOffset.DOUBLE_DAYLIGHT_TIME, 56),
    ],
)
def test_from_offset(offset: timedelta, dst: DstOffset, time_zone: int) -> None:
    info = LocalTimeInformation.from_offset(offset, dst)
    assert info == LocalTimeInformation(time_zone, dst)
    assert info.utc_offset() == offset


def test_from_offset_of_an_aware_datetime() -> None:
    aware = datetime(2024, 7, 1, 9, 0, tzinfo=timezone(timedelta(hours=-3)))
    offset = aware.utcoffset()
    assert offset is not None
    assert LocalTimeInformation.from_offset(offset).encode() == bytes.fromhex("f4 00")


@pytest.mark.parametrize(
    ("offset", "dst", "match"),
    [
        (timedelta(hours=5, minutes=10), DstOffset.STANDARD_TIME, "15-minute"),
        (timedelta(seconds=1), DstOffset.STANDARD_TIME, "15-minute"),
        (timedelta(hours=15), DstOffset.STANDARD_TIME, "outside"),
        (timedelta(hours=-13), DstOffset.STANDARD_TIME, "outside"),
        (timedelta(hours=-12), DstOffset.DAYLIGHT_TIME, "outside"),  # standard part -13 h
        (timedelta(hours=1), DstOffset.UNKNOWN, "unknown"),
    ],
)
def test_from_offset_refuses(offset: timedelta, dst: DstOffset, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LocalTimeInformation.from_offset(offset, dst)


def test_every_known_offset_survives_from_offset() -> None:
    for time_zone in range(-48, 57):
        for dst in (code for code in DstOffset if code is not DstOffset.UNKNOWN):
            info = LocalTimeInformation(time_zone, dst)
            offset = info.utc_offset()
            assert offset is not None
            assert LocalTimeInformation.from_offset(offset, dst) == info


def test_every_two_byte_value_round_trips() -> None:
    for raw in range(0x10000):
        data = raw.to_bytes(2, "little")
        info = LocalTimeInformation.decode(data)
        assert -128 <= info.time_zone <= 127
        assert info.encode() == data


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Time Zone", 0),
        ("08", "DST Offset", 1),
        ("08 04 00", "Local Time Information", 2),
    ],
)
def test_malformed_local_time_information(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        LocalTimeInformation.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A0F",
        field,
        offset,
    )


@pytest.mark.parametrize(
    "bad",
    [
        LocalTimeInformation(128, 0),
        LocalTimeInformation(-129, 0),
        LocalTimeInformation(0, 256),
        LocalTimeInformation(0, -1),
    ],
)
def test_local_time_encode_refuses_what_does_not_fit(bad: LocalTimeInformation) -> None:
    with pytest.raises(ValueError):
        bad.encode()


def test_read_and_write_embed_in_other_values() -> None:
    reader = Reader(bytes.fromhex("aa ec 04 bb"), "TEST")
    reader.u8("before")
    assert LocalTimeInformation.read(reader) == LocalTimeInformation(-20, 4)
    assert reader.u8("after") == 0xBB
    writer = Writer()
    LocalTimeInformation(-20, 4).write(writer)
    assert writer.to_bytes() == bytes.fromhex("ec 04")


local_times = st.builds(LocalTimeInformation, st.integers(-128, 127), st.integers(0, 0xFF))


@given(local_times)
def test_local_time_model_round_trip(info: LocalTimeInformation) -> None:
    assert LocalTimeInformation.decode(info.encode()) == info


# --- Fuzz --------------------------------------------------------------------------------------

FUZZ_RUNS = 100_000


def test_fuzz_current_time() -> None:
    valid = [
        LEAP,
        bytes.fromhex("e907010f0e1e2d032101"),
        bytes.fromhex("0000 00 00 0c 00 00 00 40 00"),
        CurrentTime.from_datetime(
            datetime(2026, 8, 22, 8, 42, 36), adjust_reason=NO_ADJUSTMENT
        ).encode(),
    ]
    decoded = assert_only_decode_errors("current-time-2A2B", CurrentTime.decode, valid, FUZZ_RUNS)
    assert decoded > FUZZ_RUNS // 100


def test_fuzz_local_time_information() -> None:
    valid = [bytes.fromhex("0804"), bytes.fromhex("80ff"), bytes.fromhex("d000")]
    decoded = assert_only_decode_errors(
        "current-time-2A0F", LocalTimeInformation.decode, valid, FUZZ_RUNS
    )
    assert decoded > FUZZ_RUNS // 100
