"""Weight Measurement (0x2A9D) and Weight Scale Feature (0x2A9E)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given

from drivers.codecs import DateTime, DecodeError, Units, WeightMeasurement, WeightScaleFeature

from .strategies import weight_measurements, weight_payloads, weight_scale_features

# Hand-computed, all flags (0x0E): SI; 14000 x 0.005 = 70.000 kg; 2024-02-29 23:59:58;
# user 3; BMI 229 x 0.1 = 22.9; height 1748 x 0.001 = 1.748 m. 15 bytes, the maximum.
FULL = bytes.fromhex("0e b036 e807 02 1d 17 3b 3a 03 e500 d406")


def test_full_fifteen_byte_measurement() -> None:
    assert len(FULL) == 15
    m = WeightMeasurement.decode(FULL)
    assert m == WeightMeasurement(
        units=Units.SI,
        weight_raw=14000,
        timestamp=DateTime(2024, 2, 29, 23, 59, 58),
        user_id=3,
        bmi_raw=229,
        height_raw=1748,
    )
    assert str(m.weight) == "70.000"  # the LSB's three decimals are kept
    assert m.weight_unit == "kg"
    assert str(m.bmi) == "22.9"
    assert str(m.height) == "1.748"
    assert m.height_unit == "m"
    assert m.flags == 0x0E
    assert not m.unsuccessful
    assert m.encode() == FULL


def test_captured_and_uc352_weight_keeps_device_precision() -> None:
    m = WeightMeasurement.decode(bytes.fromhex("02 5433 ea07 08 16 08 2a 24"))
    assert m.weight == Decimal("65.7")
    assert m.weight is not None and m.weight.as_tuple().exponent == -3  # "65.700"
    assert m.timestamp == DateTime(2026, 8, 22, 8, 42, 36)


def test_imperial_units() -> None:
    # flags 0x09: imperial + BMI/height; 15432 x 0.01 = 154.32 lb; BMI 22.9; 688 x 0.1 = 68.8 in
    data = bytes.fromhex("09 483c e500 b002")
    m = WeightMeasurement.decode(data)
    assert m.units is Units.IMPERIAL
    assert (str(m.weight), m.weight_unit) == ("154.32", "[lb_av]")
    assert (str(m.height), m.height_unit) == ("68.8", "[in_i]")
    assert str(m.bmi) == "22.9"
    assert m.encode() == data


def test_feature_resolution_is_not_a_scale_factor() -> None:
    # A scale advertising 0.5 kg display resolution still sends 0.005 kg LSBs (spec §3.1).
    feature = WeightScaleFeature.decode(bytes.fromhex("08 00 00 00"))
    assert feature.weight_resolution_text == "0.5 kg / 1 lb"
    assert WeightMeasurement.decode(bytes.fromhex("00 8c3c")).weight == Decimal("77.5")


@pytest.mark.parametrize("hex_value", ["00 ffff", "02 ffff e807 02 1d 17 3b 3a", "01 ffff"])
def test_unsuccessful_measurement(hex_value: str) -> None:
    m = WeightMeasurement.decode(bytes.fromhex(hex_value))
    assert m.unsuccessful
    assert m.weight is None
    assert m.weight_raw == 0xFFFF
    assert m.encode() == bytes.fromhex(hex_value)


def test_unsuccessful_with_stray_bmi_height_is_accepted() -> None:
    m = WeightMeasurement.decode(bytes.fromhex("08 ffff e500 d406"))
    assert m.unsuccessful and m.bmi == Decimal("22.9")


def test_unknown_user() -> None:
    m = WeightMeasurement.decode(bytes.fromhex("04 8c3c ff"))
    assert m.user_id == 0xFF
    assert m.user_unknown
    assert m.weight == Decimal("77.500")


@pytest.mark.parametrize("flags", [0xF0, 0x10, 0x80, 0xFF])
def test_rfu_flag_bits_are_ignored_but_kept(flags: int) -> None:
    body = bytes.fromhex("8c3c")
    if flags & 0x02:
        body += bytes.fromhex("e807 02 1d 17 3b 3a")
    if flags & 0x04:
        body += b"\x01"
    if flags & 0x08:
        body += bytes.fromhex("e500 d406")
    data = bytes([flags]) + body
    m = WeightMeasurement.decode(data)
    assert m.rfu_flags == flags & 0xF0
    assert m.units is Units(flags & 1)
    assert m.weight == (Decimal("155.00") if flags & 1 else Decimal("77.500"))
    assert m.flags == flags
    assert m.encode() == data


def test_trailing_bytes_are_tolerated_and_kept() -> None:
    data = bytes.fromhex("00 8c3c aa bb")
    m = WeightMeasurement.decode(data)
    assert m.trailing == b"\xaa\xbb"
    assert m.weight == Decimal("77.5")
    assert m.encode() == data


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Flags", 0),
        ("00", "Weight", 1),
        ("00 8c", "Weight", 1),
        ("02 8c3c e807 02 1d 17 3b", "Time Stamp", 3),
        ("04 8c3c", "User ID", 3),
        ("06 8c3c e807 02 1d 17 3b 3a", "User ID", 10),
        ("08 8c3c e5", "BMI", 3),
        ("08 8c3c e500 d4", "Height", 5),
        ("0c 8c3c 03 e500", "Height", 6),
        ("0e b036 e807 02 1d 17 3b 3a 03 e500 d4", "Height", 13),
        ("02 8c3c e807 0d 1d 17 3b 3a", "Time Stamp.Month", 5),
        ("02 8c3c e807 02 1e 17 3b 3a", "Time Stamp", 3),  # 2024-02-30
    ],
)
def test_malformed_values(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        WeightMeasurement.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A9D",
        field,
        offset,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bmi_raw": 229},
        {"height_raw": 1748},
        {"rfu_flags": 0x01},
        {"rfu_flags": 0x100},
        {"weight_raw": 0x10000},
        {"weight_raw": -1},
        {"user_id": 0x100},
        {"bmi_raw": 0x10000, "height_raw": 1},
        {"timestamp": DateTime(2024, 2, 30, 0, 0, 0)},
    ],
)
def test_encode_refuses_what_the_wire_cannot_carry(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"units": Units.SI, "weight_raw": 100, **kwargs}
    m = WeightMeasurement(**fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        m.encode()


@pytest.mark.parametrize("flags", range(256))
def test_every_flags_byte_round_trips(flags: int) -> None:
    data = bytes([flags]) + bytes.fromhex("3412")
    if flags & 0x02:
        data += bytes.fromhex("e807 02 1d 17 3b 3a")
    if flags & 0x04:
        data += b"\x07"
    if flags & 0x08:
        data += bytes.fromhex("e500 d406")
    m = WeightMeasurement.decode(data)
    assert m.flags == flags
    assert (m.timestamp is not None) == bool(flags & 0x02)
    assert (m.user_id is not None) == bool(flags & 0x04)
    assert (m.bmi_raw is not None) == (m.height_raw is not None) == bool(flags & 0x08)
    assert m.trailing == b""
    assert m.encode() == data


@given(weight_measurements())
def test_model_round_trip(m: WeightMeasurement) -> None:
    assert WeightMeasurement.decode(m.encode()) == m


@given(weight_payloads())
def test_bytes_round_trip(data: bytes) -> None:
    assert WeightMeasurement.decode(data).encode() == data


# --- Weight Scale Feature --------------------------------------------------------------------


def test_feature_hand_computed() -> None:
    # time stamp (b0) + BMI (b2) + weight code 7 (0x38) + height code 3 (0x180) = 0x1BD
    data = bytes.fromhex("bd 01 00 00")
    f = WeightScaleFeature.decode(data)
    assert f == WeightScaleFeature(
        timestamp_supported=True,
        multiple_users_supported=False,
        bmi_supported=True,
        weight_resolution=7,
        height_resolution=3,
    )
    assert f.weight_resolution_text == "0.005 kg / 0.01 lb"
    assert f.height_resolution_text == "0.001 m / 0.1 in"
    assert f.encode() == data


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, "not specified"),
        (1, "0.5 kg / 1 lb"),
        (2, "0.2 kg / 0.5 lb"),
        (3, "0.1 kg / 0.2 lb"),
        (4, "0.05 kg / 0.1 lb"),
        (5, "0.02 kg / 0.05 lb"),
        (6, "0.01 kg / 0.02 lb"),
        (7, "0.005 kg / 0.01 lb"),
        (8, "reserved"),
        (15, "reserved"),
    ],
)
def test_weight_resolution_table(code: int, text: str) -> None:
    f = WeightScaleFeature.decode((code << 3).to_bytes(4, "little"))
    assert (f.weight_resolution, f.weight_resolution_text) == (code, text)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, "not specified"),
        (1, "0.01 m / 1 in"),
        (2, "0.005 m / 0.5 in"),
        (3, "0.001 m / 0.1 in"),
        (4, "reserved"),
        (7, "reserved"),
    ],
)
def test_height_resolution_table(code: int, text: str) -> None:
    f = WeightScaleFeature.decode((code << 7).to_bytes(4, "little"))
    assert (f.height_resolution, f.height_resolution_text) == (code, text)


def test_feature_rfu_bits_and_trailing_are_kept() -> None:
    data = bytes.fromhex("ff ff ff ff 01 02")
    f = WeightScaleFeature.decode(data)
    assert f.rfu == 0xFFFFFC00
    assert f.timestamp_supported and f.multiple_users_supported and f.bmi_supported
    assert (f.weight_resolution, f.height_resolution) == (15, 7)
    assert f.trailing == b"\x01\x02"
    assert f.encode() == data


@pytest.mark.parametrize("hex_value", ["", "8f", "8f 00 00"])
def test_feature_too_short(hex_value: str) -> None:
    with pytest.raises(DecodeError) as info:
        WeightScaleFeature.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A9E",
        "Weight Scale Feature",
        0,
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"weight_resolution": 16}, {"height_resolution": 8}, {"rfu": 0x200}, {"rfu": 1 << 32}],
)
def test_feature_encode_refuses_overflowing_fields(kwargs: dict[str, int]) -> None:
    fields: dict[str, object] = {
        "timestamp_supported": False,
        "multiple_users_supported": False,
        "bmi_supported": False,
        "weight_resolution": 0,
        "height_resolution": 0,
        **kwargs,
    }
    with pytest.raises(ValueError):
        WeightScaleFeature(**fields).encode()  # type: ignore[arg-type]


@given(weight_scale_features)
def test_feature_round_trip(f: WeightScaleFeature) -> None:
    assert WeightScaleFeature.decode(f.encode()) == f
