"""Blood Pressure Measurement (0x2A35), Intermediate Cuff Pressure (0x2A36), Feature (0x2A49).

The public vectors for these characteristics are checked in test_vectors.py (vectors.json).
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given

from drivers.codecs import (
    DECODERS,
    BloodPressureFeature,
    BloodPressureMeasurement,
    DateTime,
    DecodeError,
    IntermediateCuffPressure,
    MeasurementStatus,
    MedFloat,
    PressureUnit,
    PulseRateRange,
    Special,
    to_jsonable,
)

from .fuzzing import assert_only_decode_errors
from .strategies import (
    blood_pressure_features,
    blood_pressure_measurements,
    blood_pressure_payloads,
    cuff_pressures,
)

# Nordic's full vector: flags 0x1E (mmHg, time stamp, pulse, user, status); 8A 00 = 138,
# 58 00 = 88, 78 00 = 120 mmHg; year 0 (unknown) April 17 20:41:59; 3C 00 = 60 bpm; user 1;
# status 0x0027 = body movement + cuff loose + irregular pulse + improper position, range 0.
NORDIC_FULL = bytes.fromhex("1e 8a00 5800 7800 0000 04 11 14 29 3b 3c00 01 2700")

# Hand-computed, 19 bytes (the maximum): flags 0xDE = RFU b6+b7 set, mmHg, every optional field;
# 78 00 = 120, 50 00 = 80, MAP = FF 07 (NaN, as a real monitor sends it); 2024-02-29 23:59:58;
# 48 00 = 72 bpm; user 2; status 0x0080 = only RFU bit 7 set.
RFU_NAN = bytes.fromhex("de 7800 5000 ff07 e807 02 1d 17 3b 3a 4800 02 8000")


def test_nordic_full_measurement() -> None:
    m = BloodPressureMeasurement.decode(NORDIC_FULL)
    assert m == BloodPressureMeasurement(
        unit=PressureUnit.MMHG,
        systolic=MedFloat(138, 0),
        diastolic=MedFloat(88, 0),
        mean_arterial_pressure=MedFloat(120, 0),
        timestamp=DateTime(0, 4, 17, 20, 41, 59),
        pulse_rate=MedFloat(60, 0),
        user_id=1,
        status=MeasurementStatus(
            body_movement=True,
            cuff_too_loose=True,
            irregular_pulse=True,
            improper_position=True,
        ),
    )
    assert (m.systolic_value, m.diastolic_value, m.mean_arterial_pressure_value) == (
        Decimal(138),
        Decimal(88),
        Decimal(120),
    )
    assert (m.pressure_unit, m.pulse_rate_unit) == ("mm[Hg]", "/min")
    assert m.pulse_rate_value == Decimal(60)
    assert m.timestamp is not None and m.timestamp.to_datetime() is None  # year unknown
    assert m.status is not None and m.status.raw == 0x0027
    assert m.flags == 0x1E
    assert m.encode() == NORDIC_FULL


def test_nordic_minimal_keeps_one_decimal() -> None:
    # BD F0: exponent F = -1, mantissa 0x0BD = 189 -> 18.9; 9F F0 -> 159 x 10^-1 = 15.9
    m = BloodPressureMeasurement.decode(bytes.fromhex("00 bdf0 0b00 9ff0"))
    assert str(m.systolic_value) == "18.9"
    assert str(m.diastolic_value) == "11"
    assert str(m.mean_arterial_pressure_value) == "15.9"
    assert (m.timestamp, m.pulse_rate, m.user_id, m.status) == (None, None, None, None)
    assert m.pulse_rate_value is None


def test_nan_map_rfu_flags_and_rfu_status_are_kept() -> None:
    assert len(RFU_NAN) == 19
    m = BloodPressureMeasurement.decode(RFU_NAN)
    assert m.mean_arterial_pressure == MedFloat(2047, 0, Special.NAN)
    assert m.mean_arterial_pressure_value is None  # never 2047
    assert (m.systolic_value, m.diastolic_value) == (Decimal(120), Decimal(80))
    assert m.rfu_flags == 0xC0
    assert m.unit is PressureUnit.MMHG
    assert m.timestamp == DateTime(2024, 2, 29, 23, 59, 58)
    assert m.pulse_rate_value == 72
    assert m.user_id == 2
    assert m.status == MeasurementStatus(rfu=0x0080)
    assert m.flags == 0xDE
    assert m.encode() == RFU_NAN


def test_kpa_keeps_the_device_exponent() -> None:
    # A0 F0 = 160 x 10^-1 = 16.0 kPa; 6B F0 = 10.7; 7D F0 = 12.5
    data = bytes.fromhex("01 a0f0 6bf0 7df0")
    m = BloodPressureMeasurement.decode(data)
    assert m.unit is PressureUnit.KPA
    assert m.pressure_unit == "kPa"
    assert [str(v) for v in (m.systolic_value, m.diastolic_value)] == ["16.0", "10.7"]
    assert str(m.mean_arterial_pressure_value) == "12.5"
    assert m.encode() == data


@pytest.mark.parametrize(
    ("raw", "special"),
    [
        ("ff07", Special.NAN),
        ("0008", Special.NRES),
        ("fe07", Special.POSITIVE_INFINITY),
        ("0208", Special.NEGATIVE_INFINITY),
        ("0108", Special.RESERVED),
    ],
)
def test_special_pulse_rate_stays_explicit(raw: str, special: Special) -> None:
    data = bytes.fromhex("04 7800 5000 5d00" + raw)
    m = BloodPressureMeasurement.decode(data)
    assert m.pulse_rate is not None and m.pulse_rate.special is special
    assert m.pulse_rate_value is None
    assert m.mean_arterial_pressure_value == 93
    assert m.encode() == data


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0x0000, PulseRateRange.WITHIN_RANGE),
        (0x0008, PulseRateRange.ABOVE_UPPER_LIMIT),
        (0x0010, PulseRateRange.BELOW_LOWER_LIMIT),
        (0x0018, PulseRateRange.RESERVED),
    ],
)
def test_pulse_rate_range_is_one_two_bit_code(status: int, expected: PulseRateRange) -> None:
    data = bytes.fromhex("10 7800 5000 5d00") + status.to_bytes(2, "little")
    m = BloodPressureMeasurement.decode(data)
    assert m.status == MeasurementStatus(pulse_rate_range=expected)
    assert m.encode() == data


def test_every_status_bit() -> None:
    s = MeasurementStatus.from_raw(0xFFFF)
    assert s == MeasurementStatus(
        body_movement=True,
        cuff_too_loose=True,
        irregular_pulse=True,
        pulse_rate_range=PulseRateRange.RESERVED,
        improper_position=True,
        rfu=0xFFC0,
    )
    assert s.raw == 0xFFFF
    assert all(MeasurementStatus.from_raw(raw).raw == raw for raw in range(0x10000))


def test_unknown_user_and_trailing_bytes() -> None:
    data = bytes.fromhex("08 7800 5000 5d00 ff aabb")
    m = BloodPressureMeasurement.decode(data)
    assert m.user_unknown
    assert m.trailing == b"\xaa\xbb"
    assert m.encode() == data


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Flags", 0),
        ("00", "Systolic", 1),
        ("00 78", "Systolic", 1),
        ("00 7800", "Diastolic", 3),
        ("00 7800 50", "Diastolic", 3),
        ("00 7800 5000", "Mean Arterial Pressure", 5),
        ("00 7800 5000 5d", "Mean Arterial Pressure", 5),
        ("02 7800 5000 5d00 e807 02 1d 17 3b", "Time Stamp", 7),
        ("04 7800 5000 5d00 48", "Pulse Rate", 7),
        ("06 7800 5000 5d00 e807 02 1d 17 3b 3a", "Pulse Rate", 14),
        ("08 7800 5000 5d00", "User ID", 7),
        ("0c 7800 5000 5d00 4800", "User ID", 9),
        ("10 7800 5000 5d00 80", "Measurement Status", 7),
        ("1e 8a00 5800 7800 0000 04 11 14 29 3b 3c00 01 27", "Measurement Status", 17),
        ("02 7800 5000 5d00 e807 0d 1d 17 3b 3a", "Time Stamp.Month", 9),
        ("02 7800 5000 5d00 e807 02 1d 18 3b 3a", "Time Stamp.Hours", 11),
        ("02 7800 5000 5d00 e907 02 1d 17 3b 3a", "Time Stamp", 7),  # 2025-02-29
    ],
)
def test_malformed_measurement(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        BloodPressureMeasurement.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A35",
        field,
        offset,
    )
    assert info.value.payload_hex == bytes.fromhex(hex_value).hex()


def test_error_message_never_contains_values() -> None:
    with pytest.raises(DecodeError) as info:
        BloodPressureMeasurement.decode(NORDIC_FULL[:-1])
    message = str(info.value)
    assert message == "2A35: field 'Measurement Status' at offset 17: needs 2 bytes, 1 left"
    assert NORDIC_FULL[:-1].hex() not in message


def _measurement(**kwargs: object) -> BloodPressureMeasurement:
    fields: dict[str, object] = {
        "unit": PressureUnit.MMHG,
        "systolic": MedFloat(120, 0),
        "diastolic": MedFloat(80, 0),
        "mean_arterial_pressure": MedFloat(93, 0),
        **kwargs,
    }
    return BloodPressureMeasurement(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rfu_flags": 0x01},
        {"rfu_flags": 0x10},
        {"rfu_flags": 0x100},
        {"user_id": 0x100},
        {"user_id": -1},
        {"systolic": MedFloat(2048, 0)},
        {"diastolic": MedFloat(1, 8)},
        {"mean_arterial_pressure": MedFloat(2047, 0)},  # collides with NaN
        {"pulse_rate": MedFloat(-2049, 0)},
        {"status": MeasurementStatus(rfu=0x0001)},
        {"timestamp": DateTime(2024, 2, 30, 0, 0, 0)},
    ],
)
def test_encode_refuses_what_the_wire_cannot_carry(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _measurement(**kwargs).encode()


def test_encode_from_decimal_values() -> None:
    m = _measurement(
        systolic=MedFloat.from_decimal(Decimal("16.0"), short=True),
        pulse_rate=MedFloat.from_decimal(Decimal("72"), short=True),
        unit=PressureUnit.KPA,
    )
    assert m.encode() == bytes.fromhex("05 a0f0 5000 5d00 4800")


@pytest.mark.parametrize("flags", range(256))
def test_every_flags_byte_round_trips(flags: int) -> None:
    data = bytes([flags]) + bytes.fromhex("7800 5000 ff07")
    if flags & 0x02:
        data += bytes.fromhex("e807 02 1d 17 3b 3a")
    if flags & 0x04:
        data += bytes.fromhex("4800")
    if flags & 0x08:
        data += b"\x05"
    if flags & 0x10:
        data += bytes.fromhex("2700")
    for model in (BloodPressureMeasurement, IntermediateCuffPressure):
        m = model.decode(data)
        assert m.flags == flags
        assert m.unit is PressureUnit(flags & 1)
        assert (m.timestamp is not None) == bool(flags & 0x02)
        assert (m.pulse_rate is not None) == bool(flags & 0x04)
        assert (m.user_id is not None) == bool(flags & 0x08)
        assert (m.status is not None) == bool(flags & 0x10)
        assert m.rfu_flags == flags & 0xE0
        assert m.trailing == b""
        assert m.encode() == data


@given(blood_pressure_measurements())
def test_model_round_trip(m: BloodPressureMeasurement) -> None:
    assert BloodPressureMeasurement.decode(m.encode()) == m


@given(blood_pressure_payloads())
def test_bytes_round_trip(data: bytes) -> None:
    assert BloodPressureMeasurement.decode(data).encode() == data


# --- Intermediate Cuff Pressure ----------------------------------------------------------------


def test_cuff_pressure_nordic_full() -> None:
    data = bytes.fromhex("1e 0400 0000 0000 0000 04 11 14 29 3b 3c00 01 2700")
    icp = IntermediateCuffPressure.decode(data)
    assert icp.cuff_pressure_value == 4
    assert icp.unused_diastolic == icp.unused_mean_arterial_pressure == MedFloat(0, 0)
    assert icp.pulse_rate_value == 60
    assert icp.status == MeasurementStatus.from_raw(0x0027)
    assert icp.encode() == data


def test_cuff_pressure_is_not_a_measurement() -> None:
    icp = DECODERS["2A36"](bytes.fromhex("00 d7f0 ff07 ff07"))
    assert isinstance(icp, IntermediateCuffPressure)
    assert not isinstance(icp, BloodPressureMeasurement)
    assert str(icp.cuff_pressure_value) == "21.5"  # D7 F0 = 215 x 10^-1
    assert icp.pressure_unit == "mm[Hg]"
    # The spec's NaN filler is also the default when building one.
    assert icp == IntermediateCuffPressure(unit=PressureUnit.MMHG, cuff_pressure=MedFloat(215, -1))


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Flags", 0),
        ("01 d7", "Current Cuff Pressure", 1),
        ("01 d7f0 ff", "Diastolic (unused)", 3),
        ("01 d7f0 ff07", "Mean Arterial Pressure (unused)", 5),
        ("1f d7f0 ff07 ff07 0000 04 11 14 29 3b 3c00 01", "Measurement Status", 17),
    ],
)
def test_malformed_cuff_pressure(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        IntermediateCuffPressure.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A36",
        field,
        offset,
    )


def test_cuff_pressure_encode_refuses_rfu_outside_mask() -> None:
    icp = IntermediateCuffPressure(
        unit=PressureUnit.MMHG, cuff_pressure=MedFloat(4, 0), rfu_flags=0x02
    )
    with pytest.raises(ValueError):
        icp.encode()


@given(cuff_pressures())
def test_cuff_pressure_model_round_trip(icp: IntermediateCuffPressure) -> None:
    assert IntermediateCuffPressure.decode(icp.encode()) == icp


@given(blood_pressure_payloads())
def test_cuff_pressure_bytes_round_trip(data: bytes) -> None:
    assert IntermediateCuffPressure.decode(data).encode() == data


# --- Blood Pressure Feature --------------------------------------------------------------------


def test_feature_hand_computed() -> None:
    # 0x0021 = body movement detection (b0) + multiple bonds (b5)
    data = bytes.fromhex("2100")
    f = BloodPressureFeature.decode(data)
    assert f == BloodPressureFeature(body_movement_detection=True, multiple_bonds=True)
    assert f.bits == 0x21
    assert f.encode() == data


@pytest.mark.parametrize(
    ("bit", "name"),
    [
        (0, "body_movement_detection"),
        (1, "cuff_fit_detection"),
        (2, "irregular_pulse_detection"),
        (3, "pulse_rate_range_detection"),
        (4, "measurement_position_detection"),
        (5, "multiple_bonds"),
        (6, "e2e_crc"),
        (7, "user_data_service"),
        (8, "user_facing_time"),
    ],
)
def test_feature_bits(bit: int, name: str) -> None:
    f = BloodPressureFeature.decode((1 << bit).to_bytes(2, "little"))
    assert f == BloodPressureFeature(**{name: True})  # type: ignore[arg-type]


def test_feature_rfu_bits_and_trailing_are_kept() -> None:
    data = bytes.fromhex("00fe 0102")
    f = BloodPressureFeature.decode(data)
    assert f == BloodPressureFeature(rfu=0xFE00, trailing=b"\x01\x02")
    assert f.encode() == data


@pytest.mark.parametrize("hex_value", ["", "3f"])
def test_feature_too_short(hex_value: str) -> None:
    with pytest.raises(DecodeError) as info:
        BloodPressureFeature.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A49",
        "Blood Pressure Feature",
        0,
    )


@pytest.mark.parametrize("rfu", [0x0100, 0x0001, 0x10000])
def test_feature_encode_refuses_rfu_outside_mask(rfu: int) -> None:
    with pytest.raises(ValueError):
        BloodPressureFeature(rfu=rfu).encode()


@given(blood_pressure_features)
def test_feature_round_trip(f: BloodPressureFeature) -> None:
    assert BloodPressureFeature.decode(f.encode()) == f


def test_feature_every_word_round_trips() -> None:
    for bits in range(0x10000):
        data = bits.to_bytes(2, "little")
        assert BloodPressureFeature.decode(data).encode() == data


# --- JSON and fuzz -----------------------------------------------------------------------------


def test_json_keeps_exponents_and_specials() -> None:
    out = to_jsonable(BloodPressureMeasurement.decode(RFU_NAN))
    assert isinstance(out, dict)
    assert out["mean_arterial_pressure"] == {
        "mantissa": 2047,
        "exponent": 0,
        "special": "nan",
        "values": {"value": None},
    }
    assert out["status"] == {
        "body_movement": False,
        "cuff_too_loose": False,
        "irregular_pulse": False,
        "pulse_rate_range": "WITHIN_RANGE",
        "improper_position": False,
        "rfu": 0x80,
        "values": {"raw": 0x80},
    }
    assert out["values"] == {
        "flags": 0xDE,
        "systolic_value": "120",
        "diastolic_value": "80",
        "mean_arterial_pressure_value": None,
        "pressure_unit": "mm[Hg]",
        "pulse_rate_value": "72",
        "pulse_rate_unit": "/min",
        "user_unknown": False,
    }
    icp = to_jsonable(IntermediateCuffPressure.decode(bytes.fromhex("01 a0f0 ff07 ff07")))
    assert isinstance(icp, dict)
    assert icp["values"]["cuff_pressure_value"] == "16.0"
    assert icp["values"]["pressure_unit"] == "kPa"
    feature = to_jsonable(BloodPressureFeature.decode(bytes.fromhex("ff01")))
    assert isinstance(feature, dict) and feature["values"] == {"bits": 0x1FF}


FUZZ_RUNS = 100_000
FUZZ_VALID = {
    "2A35": [NORDIC_FULL, RFU_NAN, bytes.fromhex("00 bdf0 0b00 9ff0")],
    "2A36": [bytes.fromhex("1e 0400 0000 0000 0000 04 11 14 29 3b 3c00 01 2700")],
    "2A49": [bytes.fromhex("ff01"), bytes.fromhex("3f00")],
}


@pytest.mark.parametrize("uuid", sorted(FUZZ_VALID))
def test_fuzz_only_decode_errors(uuid: str) -> None:
    decoded = assert_only_decode_errors(
        f"blood-pressure-{uuid}", DECODERS[uuid], FUZZ_VALID[uuid], FUZZ_RUNS
    )
    assert decoded > FUZZ_RUNS // 100  # the loop reaches the deep fields, not just errors
