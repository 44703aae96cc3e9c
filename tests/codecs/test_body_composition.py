"""Body Composition Measurement (0x2A9C) and Body Composition Feature (0x2A9B).

The public vectors for these characteristics are copied, with their provenance, into
vectors_bcs_plx.json and checked here key by key.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.codecs.body_composition import (
    BODY_FAT_UNSUCCESSFUL,
    BodyCompositionFeature,
    BodyCompositionMeasurement,
    merge_packets,
    split_packets,
)
from drivers.codecs.date_time import DateTime
from drivers.codecs.errors import DecodeError
from drivers.codecs.jsonable import to_jsonable
from drivers.codecs.weight_scale import Units

from .fuzzing import assert_only_decode_errors, seed_for
from .strategies import date_times, u8, u16

VECTORS: list[dict[str, Any]] = [
    v
    for v in json.loads((Path(__file__).parent / "vectors_bcs_plx.json").read_text("utf-8"))
    if v["characteristic"] in {"0x2A9C", "0x2A9B"}
]

# (flag bit, attribute, wire name) of the flag-gated uint16 fields, in wire order (spec §4.1).
UINT16_FIELDS = (
    (3, "basal_metabolism_raw", "Basal Metabolism"),
    (4, "muscle_percentage_raw", "Muscle Percentage"),
    (5, "muscle_mass_raw", "Muscle Mass"),
    (6, "fat_free_mass_raw", "Fat Free Mass"),
    (7, "soft_lean_mass_raw", "Soft Lean Mass"),
    (8, "body_water_mass_raw", "Body Water Mass"),
    (9, "impedance_raw", "Impedance"),
    (10, "weight_raw", "Weight"),
    (11, "height_raw", "Height"),
)

# Hand-computed full record, 30 octets (spec §4.1: 2+2+7+1+9x2): flags 0x0FFE = SI, b1-b11;
# body fat C8 00 = 200 -> 20.0 %; 2024-02-29 23:59:58; user 1; BMR 58 1B = 7000 kJ;
# muscle 450 -> 45.0 %; muscle mass 70 17 = 6000 x 0.005 = 30.000 kg; fat free E0 2E = 60.000 kg;
# soft lean F8 2A = 55.000 kg; water 28 23 = 45.000 kg; impedance 02 12 = 4610 -> 461.0 ohm;
# weight 98 3A = 15000 -> 75.000 kg; height 08 07 = 1800 -> 1.800 m.
FULL = bytes.fromhex("fe0f c800 e807021d173b3a 01 581b c201 7017 e02e f82a 2823 0212 983a 0807")
# The same record as a server sends it over a 23-octet MTU (spec §4.1 multi-packet): each packet
# has its own flags with b12 and only its own presence bits, and repeats Body Fat. Packet 1:
# flags 0x107E (b1-b6 + b12), 20 octets; packet 2: flags 0x1F80 (b7-b11 + b12), 14 octets.
PACKET_1 = bytes.fromhex("7e10 c800 e807021d173b3a 01 581b c201 7017 e02e")
PACKET_2 = bytes.fromhex("801f c800 f82a 2823 0212 983a 0807")

# Xiaomi Mi Body Composition Scale 2 (spec §4.1): flags 0x0402 but no Body Fat field.
XIAOMI = bytes.fromhex("0204 e307 011d11350100 00 282d")


def full_record(**changes: Any) -> BodyCompositionMeasurement:
    return dataclasses.replace(BodyCompositionMeasurement.decode(FULL), **changes)


# --- public vectors ----------------------------------------------------------------------------


def exact(want: object) -> Decimal:
    return Decimal(str(want))


def check_measurement(data: bytes, expected: dict[str, Any]) -> None:
    m = BodyCompositionMeasurement.decode(data)
    actual_mass: dict[str, Callable[[], Decimal | None]] = {
        "muscle_mass_kg": lambda: m.muscle_mass,
        "fat_free_mass_kg": lambda: m.fat_free_mass,
        "soft_lean_mass_kg": lambda: m.soft_lean_mass,
        "body_water_mass_kg": lambda: m.body_water_mass,
        "weight_kg": lambda: m.weight,
    }
    for key, want in expected.items():
        if key == "flags":
            assert m.flags == int(want, 16) == int.from_bytes(data[:2], "little")
        elif key == "units":
            assert m.units.name == want
        elif key == "multi_packet":
            assert m.multiple_packet is want
        elif key == "body_fat_pct":
            assert m.body_fat == exact(want)
        elif key == "timestamp":
            assert m.timestamp is not None
            wall = m.timestamp.to_datetime()
            assert wall is not None and wall.isoformat() == want
        elif key == "user_id":
            assert m.user_id == want
        elif key == "basal_metabolism_kJ":
            assert (m.basal_metabolism, m.basal_metabolism_unit) == (want, "kJ")
        elif key == "muscle_pct":
            assert m.muscle_percentage == exact(want)
        elif key in actual_mass:
            assert m.mass_unit == "kg"
            assert actual_mass[key]() == exact(want)
        elif key == "impedance_ohm":
            assert (m.impedance, m.impedance_unit) == (exact(want), "Ohm")
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert m.encode() == data


FEATURE_NAMES = {
    "timestamp": "timestamp_supported",
    "multiple_users": "multiple_users_supported",
    "basal_metabolism": "basal_metabolism_supported",
    "muscle_pct": "muscle_percentage_supported",
    "muscle_mass": "muscle_mass_supported",
    "fat_free_mass": "fat_free_mass_supported",
    "soft_lean_mass": "soft_lean_mass_supported",
    "body_water_mass": "body_water_mass_supported",
    "impedance": "impedance_supported",
    "weight": "weight_supported",
    "height": "height_supported",
}


def check_feature(data: bytes, expected: dict[str, Any]) -> None:
    f = BodyCompositionFeature.decode(data)
    for key, want in expected.items():
        if key == "supported":
            supported = [name for name, attribute in FEATURE_NAMES.items() if getattr(f, attribute)]
            assert supported == want
        elif key == "mass_resolution_code":
            assert f.mass_resolution == want
        elif key == "mass_resolution":
            assert f.mass_resolution_text == want
        elif key == "height_resolution_code":
            assert f.height_resolution == want
        elif key == "height_resolution":
            assert f.height_resolution_text == want
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert f.encode() == data


CHECKS = {"0x2A9C": check_measurement, "0x2A9B": check_feature}


def test_vectors_keep_provenance() -> None:
    assert sorted(v["characteristic"] for v in VECTORS) == ["0x2A9B", "0x2A9C", "0x2A9C"]
    for vector in VECTORS:
        assert vector["source"] and vector["provenance"] in {"literal", "assembled", "derived"}
        assert "uncertain" in vector


@pytest.mark.parametrize("vector", VECTORS, ids=[v["hex"] for v in VECTORS])
def test_public_vector(vector: dict[str, Any]) -> None:
    CHECKS[vector["characteristic"]](bytes.fromhex(vector["hex"]), vector["expected"])


def test_uncertain_soehnle_vector_is_decoded_by_the_layout_and_flagged() -> None:
    # openScale issue #1303 is flagged uncertain: composition fields are 0 instead of 0xFFFF
    # and the weight is 3.72 kg. The spec layout decodes it as is (checked above); the codec
    # does not guess what the device meant, it lets the driver see the implausible zero fat.
    (vector,) = [v for v in VECTORS if v["uncertain"]]
    m = BodyCompositionMeasurement.decode(bytes.fromhex(vector["hex"]))
    assert not m.unsuccessful
    assert m.weight == Decimal("3.720")
    assert m.plausibility_problems() == [
        "Body Fat Percentage is 0 % (device may mean 'not measured')"
    ]


def test_beurer_impedance_is_tenths_of_an_ohm() -> None:
    # [C] GSS "d = -2" would give 46.10 ohm, far below a human's ~300-700 ohm.
    m = BodyCompositionMeasurement.decode(bytes.fromhex("98037200a21eea017439d62b0212"))
    assert m.impedance_raw == 4610
    assert str(m.impedance) == "461.0"
    assert m.basal_metabolism == 7842  # kJ; the source's 1873 is kcal (7842 / 4.1868)
    assert str(m.soft_lean_mass) == "73.540"  # the 0.005 kg LSB keeps three decimals
    assert m.plausibility_problems() == []


# --- hand-computed measurements ----------------------------------------------------------------


def test_full_thirty_octet_record() -> None:
    assert len(FULL) == 30
    m = BodyCompositionMeasurement.decode(FULL)
    assert m == BodyCompositionMeasurement(
        units=Units.SI,
        body_fat_raw=200,
        timestamp=DateTime(2024, 2, 29, 23, 59, 58),
        user_id=1,
        basal_metabolism_raw=7000,
        muscle_percentage_raw=450,
        muscle_mass_raw=6000,
        fat_free_mass_raw=12000,
        soft_lean_mass_raw=11000,
        body_water_mass_raw=9000,
        impedance_raw=4610,
        weight_raw=15000,
        height_raw=1800,
    )
    values = (
        m.body_fat,
        m.muscle_percentage,
        m.muscle_mass,
        m.fat_free_mass,
        m.soft_lean_mass,
        m.body_water_mass,
        m.impedance,
        m.weight,
        m.height,
    )
    assert [str(v) for v in values] == [
        "20.0",
        "45.0",
        "30.000",
        "60.000",
        "55.000",
        "45.000",
        "461.0",
        "75.000",
        "1.800",
    ]
    assert (m.percentage_unit, m.mass_unit, m.height_unit) == ("%", "kg", "m")
    assert m.basal_metabolism == 7000
    assert m.flags == 0x0FFE
    assert not m.multiple_packet and not m.unsuccessful and not m.user_unknown
    assert m.plausibility_problems() == []
    assert m.encode() == FULL


def test_imperial_units_scale_mass_and_height() -> None:
    # flags 0x0C21: imperial, muscle mass, weight, height; fat 0x00FA = 25.0 %;
    # 0x1A0A = 6666 x 0.01 = 66.66 lb; 0x3A98 = 15000 x 0.01 = 150.00 lb; 0x02B0 = 688 -> 68.8 in
    data = bytes.fromhex("210c fa00 0a1a 983a b002")
    m = BodyCompositionMeasurement.decode(data)
    assert m.units is Units.IMPERIAL
    assert (str(m.muscle_mass), str(m.weight), m.mass_unit) == ("66.66", "150.00", "[lb_av]")
    assert (str(m.height), m.height_unit) == ("68.8", "[in_i]")
    assert m.body_fat == Decimal("25.0")
    assert m.encode() == data


@pytest.mark.parametrize(
    "hex_value", ["0000 ffff", "0600 ffff e807021d173b3a ff", "0100 ffff", "0000 ffff aabb"]
)
def test_unsuccessful_body_fat_is_explicit(hex_value: str) -> None:
    m = BodyCompositionMeasurement.decode(bytes.fromhex(hex_value))
    assert m.unsuccessful
    assert m.body_fat is None  # never 6553.5 %
    assert m.body_fat_raw == BODY_FAT_UNSUCCESSFUL
    assert m.plausibility_problems() == []  # time stamp and user may accompany it
    assert m.encode() == bytes.fromhex(hex_value)


def test_unsuccessful_with_stray_fields_is_accepted_and_flagged() -> None:
    m = BodyCompositionMeasurement.decode(bytes.fromhex("0004 ffff 983a"))
    assert m.unsuccessful and m.weight == Decimal("75.000")
    assert m.plausibility_problems() == [
        "fields other than Time Stamp and User ID sent with an unsuccessful Body Fat"
    ]


def test_ffff_in_a_mass_field_is_a_value() -> None:
    # Only Body Fat defines 0xFFFF as unsuccessful (spec §4.1); elsewhere it stays a number.
    m = BodyCompositionMeasurement.decode(bytes.fromhex("0004 c800 ffff"))
    assert m.weight == Decimal("327.675")
    assert m.plausibility_problems() == [
        "Weight is 0xFFFF (no 'unsuccessful' meaning in this field)"
    ]


def test_unknown_user_rfu_flags_and_trailing_are_kept() -> None:
    data = bytes.fromhex("04e0 c800 ff 0102")
    m = BodyCompositionMeasurement.decode(data)
    assert m.user_unknown
    assert m.rfu_flags == 0xE000
    assert m.trailing == b"\x01\x02"
    assert m.flags == 0xE004
    assert m.encode() == data


def test_xiaomi_layout_is_not_accepted_as_standard() -> None:
    # Read strictly, the year bytes land in Body Fat (201.9 %) and the month is 17.
    with pytest.raises(DecodeError) as info:
        BodyCompositionMeasurement.decode(XIAOMI)
    assert (info.value.field, info.value.offset) == ("Time Stamp.Month", 6)


def test_xiaomi_like_value_that_decodes_is_flagged() -> None:
    # Same shift with a date whose bytes happen to be valid: decodes, but fat > 100 %.
    m = BodyCompositionMeasurement.decode(bytes.fromhex("0204 e307 0b07 01 1d 11 35 01 282d"))
    assert m.body_fat == Decimal("201.9")
    assert m.plausibility_problems() == ["Body Fat Percentage above 100 %"]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"body_fat_raw": 1001}, "Body Fat Percentage above 100 %"),
        ({"muscle_percentage_raw": 1001}, "Muscle Percentage above 100 %"),
        ({"fat_free_mass_raw": 15001}, "Fat Free Mass above Weight"),
        ({"body_water_mass_raw": 20000}, "Body Water Mass above Weight"),
        ({"height_raw": 0xFFFF}, "Height is 0xFFFF (no 'unsuccessful' meaning in this field)"),
        (
            {"timestamp": DateTime(0, 2, 29, 23, 59, 58)},
            "Time Stamp has an unknown year, month or day",
        ),
        ({"multiple_packet": True}, "one packet of a multi-packet record (merge before use)"),
    ],
)
def test_plausibility_problems(changes: dict[str, Any], problem: str) -> None:
    assert full_record(**changes).plausibility_problems() == [problem]


def test_plausibility_edges_are_accepted() -> None:
    record = full_record(body_fat_raw=1000, muscle_percentage_raw=1000, fat_free_mass_raw=15000)
    assert record.plausibility_problems() == []
    # Without a weight there is nothing to compare the masses against.
    assert full_record(weight_raw=None, muscle_mass_raw=60000).plausibility_problems() == []


def test_plausibility_messages_never_contain_values() -> None:
    record = full_record(body_fat_raw=2019, muscle_percentage_raw=1234, soft_lean_mass_raw=54321)
    problems = record.plausibility_problems()
    assert len(problems) == 3
    assert not any(any(c.isdigit() for c in p.replace("100 %", "")) for p in problems)


# --- every flags word --------------------------------------------------------------------------


def payload_for(flags: int) -> bytes:
    """Fixed field values laid out as ``flags`` says; raw value of field i is 0x1100 + i."""
    data = flags.to_bytes(2, "little") + bytes.fromhex("c800")
    if flags & 1 << 1:
        data += bytes.fromhex("e807021d173b3a")
    if flags & 1 << 2:
        data += b"\x05"
    for bit, _, _ in UINT16_FIELDS:
        if flags & 1 << bit:
            data += (0x1100 + bit).to_bytes(2, "little")
    return data


def test_every_flags_word_round_trips() -> None:
    # All 8192 combinations of b0-b12, each with every pattern of the RFU bits 13-15.
    for flags in range(0x10000):
        data = payload_for(flags)
        m = BodyCompositionMeasurement.decode(data)
        assert m.flags == flags
        assert m.units is Units(flags & 1)
        assert (m.timestamp is not None) == bool(flags & 1 << 1)
        assert (m.user_id is not None) == bool(flags & 1 << 2)
        for bit, attribute, _ in UINT16_FIELDS:
            assert getattr(m, attribute) == (0x1100 + bit if flags & 1 << bit else None)
        assert m.multiple_packet is bool(flags & 1 << 12)
        assert m.rfu_flags == flags & 0xE000
        assert m.trailing == b""
        assert m.encode() == data


# --- malformed values and encode refusals ------------------------------------------------------


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Flags", 0),
        ("00", "Flags", 0),
        ("0000", "Body Fat Percentage", 2),
        ("0000 c8", "Body Fat Percentage", 2),
        ("0200 c800 e807021d173b", "Time Stamp", 4),
        ("0400 c800", "User ID", 4),
        ("0600 c800 e807021d173b3a", "User ID", 11),
        ("0e00 c800 e807021d173b3a 01 58", "Basal Metabolism", 12),
        ("0200 c800 e807 0d 1d 17 3b 3a", "Time Stamp.Month", 6),
        ("0200 c800 e807 02 1d 17 3c 3a", "Time Stamp.Minutes", 9),
        ("0200 c800 e907 02 1d 17 3b 3a", "Time Stamp", 4),  # 2025-02-29
        ("fe1f c800 e807021d173b3a 01 581b c201 7017 e02e f82a 2823 0212 983a 08", "Height", 28),
    ],
)
def test_malformed_measurement(hex_value: str, field: str, offset: int) -> None:
    data = bytes.fromhex(hex_value)
    with pytest.raises(DecodeError) as info:
        BodyCompositionMeasurement.decode(data)
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A9C",
        field,
        offset,
    )
    assert info.value.payload_hex == data.hex()


@pytest.mark.parametrize(("index", "field"), list(enumerate(UINT16_FIELDS)))
def test_each_truncated_uint16_field(index: int, field: tuple[int, str, str]) -> None:
    # Every field up to this one present, the value cut one octet into this one.
    flags = sum(1 << bit for bit, _, _ in UINT16_FIELDS[: index + 1])
    data = payload_for(flags)[:-1]
    with pytest.raises(DecodeError) as info:
        BodyCompositionMeasurement.decode(data)
    assert (info.value.field, info.value.offset) == (field[2], 4 + 2 * index)


def test_error_message_never_contains_values() -> None:
    with pytest.raises(DecodeError) as info:
        BodyCompositionMeasurement.decode(FULL[:-1])
    assert str(info.value) == "2A9C: field 'Height' at offset 28: needs 2 bytes, 1 left"


@pytest.mark.parametrize(
    "changes",
    [
        {"rfu_flags": 0x1000},  # b12 is multiple_packet, not RFU
        {"rfu_flags": 0x0001},
        {"rfu_flags": 0x10000},
        {"body_fat_raw": 0x10000},
        {"body_fat_raw": -1},
        {"user_id": 0x100},
        {"basal_metabolism_raw": 0x10000},
        {"height_raw": -1},
        {"timestamp": DateTime(2024, 2, 30, 0, 0, 0)},
    ],
)
def test_encode_refuses_what_the_wire_cannot_carry(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        full_record(**changes).encode()


# --- multi-packet ------------------------------------------------------------------------------


def test_split_full_record_into_two_twenty_octet_packets() -> None:
    first, second = split_packets(BodyCompositionMeasurement.decode(FULL))
    assert (first.encode(), second.encode()) == (PACKET_1, PACKET_2)
    assert len(PACKET_1) == 20 and len(PACKET_2) <= 20


def test_merge_the_two_packets_of_a_record() -> None:
    first = BodyCompositionMeasurement.decode(PACKET_1)
    second = BodyCompositionMeasurement.decode(PACKET_2)
    assert first.multiple_packet and second.multiple_packet
    assert (first.weight, second.timestamp, second.user_id) == (None, None, None)
    merged = merge_packets(first, second)
    assert not merged.multiple_packet  # b12 cleared
    assert merged.body_fat == Decimal("20.0")  # once, not added up
    assert merged.timestamp == first.timestamp and merged.user_id == 1
    assert merged.encode() == FULL


def test_record_that_fits_is_one_packet() -> None:
    single = dataclasses.replace(BodyCompositionMeasurement.decode(PACKET_2), multiple_packet=False)
    assert split_packets(single) == (single,)


def test_split_keeps_rfu_bits_and_trailing() -> None:
    record = full_record(rfu_flags=0xA000, trailing=b"\xaa\xbb")
    first, second = split_packets(record)
    assert first.rfu_flags == second.rfu_flags == 0xA000
    assert (first.trailing, second.trailing) == (b"", b"\xaa\xbb")
    assert merge_packets(first, second) == record


def test_split_refuses_what_two_packets_cannot_hold() -> None:
    with pytest.raises(ValueError, match="already"):
        split_packets(full_record(multiple_packet=True))
    with pytest.raises(ValueError, match="two packets"):
        split_packets(full_record(), max_size=12)
    with pytest.raises(ValueError, match="two packets"):
        split_packets(full_record(trailing=bytes(10)))


def test_merge_takes_the_second_packets_time_stamp_when_the_first_has_none() -> None:
    first = BodyCompositionMeasurement.decode(bytes.fromhex("0810 c800 581b"))
    second = BodyCompositionMeasurement.decode(bytes.fromhex("0614 c800 e807021d173b3a 02 983a"))
    merged = merge_packets(first, second)
    assert merged.timestamp == DateTime(2024, 2, 29, 23, 59, 58) and merged.user_id == 2
    assert (merged.basal_metabolism, merged.weight) == (7000, Decimal("75.000"))
    assert merged.encode() == bytes.fromhex("0e04 c800 e807021d173b3a 02 581b 983a")


def test_merge_accepts_a_repeated_identical_time_stamp_and_user() -> None:
    first = BodyCompositionMeasurement.decode(PACKET_1)
    second = dataclasses.replace(
        BodyCompositionMeasurement.decode(PACKET_2), timestamp=first.timestamp, user_id=1
    )
    assert merge_packets(first, second).encode() == FULL


def test_merge_keeps_rfu_bits_and_trailing_of_both() -> None:
    first = dataclasses.replace(
        BodyCompositionMeasurement.decode(PACKET_1), rfu_flags=0x2000, trailing=b"\x01"
    )
    second = dataclasses.replace(
        BodyCompositionMeasurement.decode(PACKET_2), rfu_flags=0x8000, trailing=b"\x02"
    )
    merged = merge_packets(first, second)
    assert (merged.rfu_flags, merged.trailing) == (0xA000, b"\x01\x02")


FIRST = BodyCompositionMeasurement.decode(PACKET_1)
SECOND = BodyCompositionMeasurement.decode(PACKET_2)


@pytest.mark.parametrize(
    ("first", "second", "match"),
    [
        (dataclasses.replace(FIRST, multiple_packet=False), SECOND, "b12"),
        (FIRST, dataclasses.replace(SECOND, multiple_packet=False), "b12"),
        (FIRST, dataclasses.replace(SECOND, units=Units.IMPERIAL), "units"),
        (FIRST, dataclasses.replace(SECOND, body_fat_raw=201), "Body Fat"),
        (FIRST, dataclasses.replace(SECOND, weight_raw=None, muscle_mass_raw=1), "Muscle Mass"),
        (FIRST, FIRST, "in both packets"),
        (FIRST, dataclasses.replace(SECOND, user_id=2), "User ID"),
        (FIRST, dataclasses.replace(SECOND, timestamp=DateTime(2024, 3, 1, 0, 0, 0)), "Time"),
    ],
)
def test_merge_refuses_packets_that_do_not_pair(
    first: BodyCompositionMeasurement, second: BodyCompositionMeasurement, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        merge_packets(first, second)


# --- hypothesis --------------------------------------------------------------------------------


@st.composite
def measurements(draw: st.DrawFn) -> BodyCompositionMeasurement:
    """Every flag combination: units, each optional field, b12, RFU bits, trailing bytes."""
    values = {attribute: draw(st.none() | u16) for _, attribute, _ in UINT16_FIELDS}
    return BodyCompositionMeasurement(
        units=draw(st.sampled_from(Units)),
        body_fat_raw=draw(u16),
        timestamp=draw(st.none() | date_times()),
        user_id=draw(st.none() | u8),
        multiple_packet=draw(st.booleans()),
        rfu_flags=draw(st.integers(0, 7)) << 13,
        trailing=draw(st.binary(max_size=6)),
        **values,
    )


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """Valid 0x2A9C bytes for any flags word (fields laid out as the flags say)."""
    flags = draw(u16)
    out = flags.to_bytes(2, "little") + draw(st.binary(min_size=2, max_size=2))
    if flags & 1 << 1:
        out += draw(date_times()).encode()
    if flags & 1 << 2:
        out += draw(st.binary(min_size=1, max_size=1))
    for bit, _, _ in UINT16_FIELDS:
        if flags & 1 << bit:
            out += draw(st.binary(min_size=2, max_size=2))
    return out + draw(st.binary(max_size=6))


@given(measurements())
def test_model_round_trip(m: BodyCompositionMeasurement) -> None:
    assert BodyCompositionMeasurement.decode(m.encode()) == m


@given(payloads())
def test_bytes_round_trip(data: bytes) -> None:
    assert BodyCompositionMeasurement.decode(data).encode() == data


@given(measurements())
def test_split_then_merge_gives_the_record_back(m: BodyCompositionMeasurement) -> None:
    record = dataclasses.replace(m, multiple_packet=False, trailing=m.trailing[:2])
    packets = split_packets(record)
    assert all(len(p.encode()) <= 20 for p in packets)
    decoded = [BodyCompositionMeasurement.decode(p.encode()) for p in packets]
    if len(decoded) == 1:
        assert decoded == [record]
    else:
        assert all(p.multiple_packet for p in decoded)
        assert merge_packets(*decoded) == record


def test_json_form() -> None:
    out = to_jsonable(BodyCompositionMeasurement.decode(FULL))
    assert isinstance(out, dict)
    assert out["units"] == "SI"
    assert out["timestamp"]["iso"] == "2024-02-29T23:59:58"
    assert out["weight_raw"] == 15000 and out["multiple_packet"] is False


# --- Body Composition Feature ------------------------------------------------------------------


@pytest.mark.parametrize(("bit", "attribute"), list(enumerate(FEATURE_NAMES.values())))
def test_feature_bits(bit: int, attribute: str) -> None:
    f = BodyCompositionFeature.decode((1 << bit).to_bytes(4, "little"))
    assert f == BodyCompositionFeature(**{attribute: True})  # type: ignore[arg-type]
    assert f.bits == 1 << bit


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, "not specified"),
        (1, "0.5 kg / 1 lb"),
        (4, "0.05 kg / 0.1 lb"),
        (7, "0.005 kg / 0.01 lb"),
        (8, "reserved"),
        (15, "reserved"),
    ],
)
def test_feature_mass_resolution_table_a(code: int, text: str) -> None:
    f = BodyCompositionFeature.decode((code << 11).to_bytes(4, "little"))
    assert (f.mass_resolution, f.mass_resolution_text) == (code, text)


@pytest.mark.parametrize(
    ("code", "text"),
    [(0, "not specified"), (1, "0.01 m / 1 in"), (3, "0.001 m / 0.1 in"), (4, "reserved")],
)
def test_feature_height_resolution_table_b(code: int, text: str) -> None:
    f = BodyCompositionFeature.decode((code << 15).to_bytes(4, "little"))
    assert (f.height_resolution, f.height_resolution_text) == (code, text)


def test_feature_rfu_bits_and_trailing_are_kept() -> None:
    data = bytes.fromhex("0000fcff 0102")
    f = BodyCompositionFeature.decode(data)
    assert f == BodyCompositionFeature(rfu=0xFFFC0000, trailing=b"\x01\x02")
    assert f.encode() == data


@pytest.mark.parametrize("hex_value", ["", "ff", "ff0f00"])
def test_feature_too_short(hex_value: str) -> None:
    with pytest.raises(DecodeError) as info:
        BodyCompositionFeature.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A9B",
        "Body Composition Feature",
        0,
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"mass_resolution": 16},
        {"mass_resolution": -1},
        {"height_resolution": 8},
        {"rfu": 1 << 17},
        {"rfu": 1 << 32},
    ],
)
def test_feature_encode_refuses_what_the_bits_cannot_carry(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BodyCompositionFeature(**changes).encode()


def test_feature_every_low_word_and_rfu_round_trips() -> None:
    for low in range(0x40000):  # bits 0-17: every supported bit and resolution code
        data = (low | 0x5A5C0000).to_bytes(4, "little")
        assert BodyCompositionFeature.decode(data).encode() == data


features = st.builds(
    BodyCompositionFeature,
    **{attribute: st.booleans() for attribute in FEATURE_NAMES.values()},
    mass_resolution=st.integers(0, 15),
    height_resolution=st.integers(0, 7),
    rfu=st.integers(0, (1 << 14) - 1).map(lambda bits: bits << 18),
    trailing=st.binary(max_size=6),
)


@given(features)
def test_feature_round_trip(f: BodyCompositionFeature) -> None:
    assert BodyCompositionFeature.decode(f.encode()) == f


# --- fuzz --------------------------------------------------------------------------------------

FUZZ_RUNS = 100_000
LONG_MAX_LEN = 40  # a 30-octet record plus room for trailing bytes and truncation


def test_fuzz_measurement_packets() -> None:
    # fuzzing.MAX_LEN (24) covers single packets: every 20-octet indication, either half.
    seeds = [
        PACKET_1,
        PACKET_2,
        *(bytes.fromhex(v["hex"]) for v in VECTORS if v["characteristic"] == "0x2A9C"),
    ]
    decoded = assert_only_decode_errors(
        "bcs-2A9C", BodyCompositionMeasurement.decode, seeds, FUZZ_RUNS
    )
    assert decoded > FUZZ_RUNS // 100


def test_fuzz_feature() -> None:
    seeds = [bytes.fromhex("ff0f0000"), bytes.fromhex("ffff0300")]
    decoded = assert_only_decode_errors("bcs-2A9B", BodyCompositionFeature.decode, seeds, FUZZ_RUNS)
    assert decoded > FUZZ_RUNS // 100


def _long_payload(rng: random.Random, seeds: list[bytes], i: int) -> bytes:
    """fuzzing.py's scheme (half uniform, half mutated seeds) with a 40-octet ceiling."""
    if i % 2 == 0:
        return rng.randbytes(rng.randint(0, LONG_MAX_LEN))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 3)):
        action = rng.randrange(4)
        if action == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif action == 1 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif action == 2:
            del data[rng.randrange(len(data) + 1) :]
        else:
            data += rng.randbytes(rng.randint(1, 4))
    return bytes(data[:LONG_MAX_LEN])


def test_fuzz_full_length_measurement() -> None:
    # Whole 30-octet records do not fit fuzzing.MAX_LEN, so this loop reaches Height and the
    # trailing bytes behind it; same contract as fuzzing.assert_only_decode_errors.
    seed = seed_for("bcs-2A9C-long")
    rng = random.Random(seed)
    seeds = [FULL, FULL[:2] + b"\xff\xff" + FULL[4:], bytes.fromhex("ffff") + FULL[2:] + b"\x00"]
    decoded_count = 0
    for i in range(FUZZ_RUNS):
        data = _long_payload(rng, seeds, i)
        try:
            decoded = BodyCompositionMeasurement.decode(data)
        except DecodeError:
            continue
        except Exception as exc:  # anything else is a codec bug
            pytest.fail(f"{type(exc).__name__}: {exc} for {data.hex()} (seed={seed}, {i})")
        decoded_count += 1
        assert decoded.encode() == data, f"{data.hex()} (seed={seed}, iteration {i})"
    assert decoded_count > FUZZ_RUNS // 100
