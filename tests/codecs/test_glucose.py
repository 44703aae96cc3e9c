"""Glucose Measurement (0x2A18), Glucose Measurement Context (0x2A34) and Glucose Feature
(0x2A51).

The public vectors for these characteristics (copied with their provenance into
vectors_glucose.json, shared with test_racp.py) are checked here, every ``expected`` key.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from enum import IntEnum
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.codecs import DateTime, DecodeError, MedFloat, Special, to_jsonable
from drivers.codecs.glucose import (
    CarbohydrateId,
    ConcentrationUnit,
    GlucoseFeature,
    GlucoseMeasurement,
    GlucoseMeasurementContext,
    GlucoseSensorStatus,
    GlucoseTester,
    Health,
    Meal,
    MedicationId,
    MedicationUnit,
    SampleLocation,
    SampleType,
)

from .fuzzing import assert_only_decode_errors
from .strategies import date_times, sfloats, u8, u16

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors_glucose.json").read_text(encoding="utf-8")
)
GLUCOSE_VECTORS = [v for v in VECTORS if v["characteristic"] != "0x2A52"]

# Hand-computed, 19 bytes: flags 0xFF = time offset, concentration, mol/L, status, context
# follows and RFU b5-b7; sequence 0xFFFF; 2024-02-29 23:59:58; offset 53 01 = +339 min (as in
# the Accu-Chek Guide capture, spec §6.1); 38 C0 = 56 x 10^-4 mol/L = 5.6 mmol/L; 0x29 = type 9
# (ISF), location 2 (alternate site); status 01 F8 = battery low + time fault + RFU b12-b15;
# two trailing bytes.
ALL_FLAGS = bytes.fromhex("ff ffff e807 02 1d 17 3b 3a 5301 38c0 29 01f8 aabb")

# Hand-computed, the spec's unit example: flags 0x02 (concentration, kg/L); sequence 42;
# 2024-01-15 08:30:00; 6F B0 = 111 x 10^-5 kg/L = 111 mg/dL; 0x11 = capillary whole blood, finger.
SPEC_MG = bytes.fromhex("02 2a00 e807 01 0f 08 1e 00 6fb0 11")

# Hand-computed context with every flag (0xFF): sequence 0x0102; extended flags 0x80 (RFU);
# carbohydrate ID 3 (dinner), 2D D0 = 45 x 10^-3; meal 1 (preprandial); 0x51 = tester 1 (self),
# health 5 (no issues); exercise FF FF (overrun) at 80 %; medication ID 1 (rapid-acting), volume
# (b5), 28 A0 = 40 x 10^-6; HbA1c 41 F0 = 65 x 10^-1 = 6.5 %; one trailing byte.
CONTEXT_FULL = bytes.fromhex("ff 0201 80 03 2dd0 01 51 ffff 50 01 28a0 41f0 aa")

BASE = "0100 e807 01 0f 08 1e 00"  # sequence 1, 2024-01-15 08:30:00


# --- public vectors ----------------------------------------------------------------------------


def _coded(code: int | None, member: IntEnum | None, want: str) -> None:
    """``want`` is "<code> <spec wording>", e.g. "2 capillary plasma"."""
    number, _, text = want.partition(" ")
    assert code == int(number)
    assert member is not None and member.name.lower().replace("_", " ") == text


def check_measurement(data: bytes, expected: dict[str, Any]) -> None:
    m = GlucoseMeasurement.decode(data)
    for key, want in expected.items():
        if key == "flags":
            assert m.flags == int(want, 16) == data[0]
        elif key == "sequence_number":
            assert m.sequence_number == want
        elif key == "base_time":
            wall = m.base_time.to_datetime()
            assert wall is not None and wall.isoformat() == want
        elif key == "time_offset_min":
            assert m.time_offset == want
        elif key == "concentration":
            assert m.concentration_value == Decimal(str(want))
        elif key == "concentration_unit":
            assert m.concentration_unit == want
        elif key == "concentration_kg_per_L":
            assert m.concentration_unit == "kg/L"
            assert m.concentration_value == Decimal(str(want))
        elif key == "concentration_mg_dL":
            assert m.mg_per_dl == Decimal(str(want))
        elif key == "type":
            _coded(m.sample_type_code, m.sample_type, want)
        elif key == "sample_location":
            _coded(m.sample_location_code, m.sample_location, want)
        elif key == "sensor_status":
            assert m.sensor_status is not None
            for name, bit in want.items():
                if name == "raw":
                    assert m.sensor_status.raw == int(bit, 16)
                else:
                    assert getattr(m.sensor_status, name) is bit
        elif key == "context_follows":
            assert m.context_follows is want
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert m.encode() == data


def check_context(data: bytes, expected: dict[str, Any]) -> None:
    c = GlucoseMeasurementContext.decode(data)
    for key, want in expected.items():
        if key == "sequence_number":
            assert c.sequence_number == want
        elif key == "meal":
            _coded(c.meal_code, c.meal, want)
        elif key == "carbohydrate_id":
            _coded(c.carbohydrate_id_code, c.carbohydrate_id, want)
        elif key == "carbohydrate_sfloat":
            assert c.carbohydrate is not None
            assert set(want) == {"raw", "mantissa", "exponent"}
            assert int.from_bytes(data[4:6], "little") == int(want["raw"], 16)
            assert (c.carbohydrate.mantissa, c.carbohydrate.exponent) == (
                want["mantissa"],
                want["exponent"],
            )
        elif key == "carbohydrate_value_per_spec":
            # The uncertain vector: its source (RONAN, biased exponent) expects 50; the
            # two's-complement layout of spec §1.2 gives 50 x 10^-8, which is asserted here.
            assert c.carbohydrate is not None
            assert c.carbohydrate.value == Decimal(str(want)) == Decimal("50E-8")
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert c.encode() == data


FEATURE_KEYS = {
    "low_battery": "low_battery_detection",
    "sensor_malfunction": "sensor_malfunction_detection",
    "sample_size": "sample_size_detection",
    "strip_insertion_error": "strip_insertion_error_detection",
    "strip_type_error": "strip_type_error_detection",
    "result_high_low": "result_high_low_detection",
    "temperature_high_low": "temperature_high_low_detection",
    "read_interrupt": "read_interrupt_detection",
    "general_device_fault": "general_device_fault",
    "time_fault": "time_fault",
    "multiple_bond": "multiple_bonds",
}


def check_feature(data: bytes, expected: dict[str, Any]) -> None:
    f = GlucoseFeature.decode(data)
    assert set(expected) <= set(FEATURE_KEYS), f"unchecked keys {set(expected) - set(FEATURE_KEYS)}"
    assert {key: getattr(f, FEATURE_KEYS[key]) for key in expected} == expected
    assert f.encode() == data


CHECKS = {"0x2A18": check_measurement, "0x2A34": check_context, "0x2A51": check_feature}


def test_vector_file_keeps_provenance() -> None:
    assert [v["characteristic"] for v in VECTORS].count("0x2A52") == 5
    assert {v["characteristic"] for v in GLUCOSE_VECTORS} == set(CHECKS)
    assert len(GLUCOSE_VECTORS) == 5
    for vector in VECTORS:
        assert vector["source"] and vector["provenance"] in {"literal", "assembled", "derived"}
        assert isinstance(vector["uncertain"], bool)
    assert [v["uncertain"] for v in GLUCOSE_VECTORS].count(True) == 1


@pytest.mark.parametrize(
    "vector", GLUCOSE_VECTORS, ids=[f"{v['characteristic']}-{v['hex']}" for v in GLUCOSE_VECTORS]
)
def test_public_vector(vector: dict[str, Any]) -> None:
    CHECKS[vector["characteristic"]](bytes.fromhex(vector["hex"]), vector["expected"])


# --- Glucose Measurement -----------------------------------------------------------------------


def test_every_flag_rfu_bits_and_trailing() -> None:
    assert len(ALL_FLAGS) == 19
    m = GlucoseMeasurement.decode(ALL_FLAGS)
    assert m == GlucoseMeasurement(
        sequence_number=0xFFFF,
        base_time=DateTime(2024, 2, 29, 23, 59, 58),
        time_offset=339,
        unit=ConcentrationUnit.MOL_PER_L,
        concentration=MedFloat(56, -4),
        sample_type_code=9,
        sample_location_code=2,
        sensor_status=GlucoseSensorStatus(battery_low=True, time_fault=True, rfu=0xF000),
        context_follows=True,
        rfu_flags=0xE0,
        trailing=b"\xaa\xbb",
    )
    assert m.flags == 0xFF
    assert (str(m.concentration_value), m.concentration_unit) == ("0.0056", "mol/L")
    assert str(m.mmol_per_l) == "5.6"
    assert m.mg_per_dl is None  # no molar-mass conversion
    assert m.sample_type is SampleType.INTERSTITIAL_FLUID
    assert m.sample_location is SampleLocation.ALTERNATE_SITE_TEST
    assert not m.is_control_solution
    assert m.user_facing_time == datetime(2024, 3, 1, 5, 38, 58)  # across the leap day
    assert m.encode() == ALL_FLAGS


def test_spec_unit_example_is_exact_mg_per_dl() -> None:
    m = GlucoseMeasurement.decode(SPEC_MG)
    assert m.unit is ConcentrationUnit.KG_PER_L
    assert str(m.concentration_value) == "0.00111"
    assert m.mg_per_dl == Decimal(111) and str(m.mg_per_dl) == "111"
    assert m.mmol_per_l is None
    assert (m.sample_type, m.sample_location) == (
        SampleType.CAPILLARY_WHOLE_BLOOD,
        SampleLocation.FINGER,
    )
    assert (m.time_offset, m.sensor_status, m.context_follows) == (None, None, False)
    assert m.user_facing_time == datetime(2024, 1, 15, 8, 30)
    assert m.encode() == SPEC_MG


def test_mg_per_dl_keeps_the_device_exponent() -> None:
    # 0xC4D2: exponent -4, mantissa 0x4D2 = 1234 -> 0.1234 kg/L = 12340 mg/dL, one digit string
    m = GlucoseMeasurement.decode(bytes.fromhex("02" + BASE + "d2c4 11"))
    assert m.mg_per_dl == Decimal(12340)
    # mol/L with exponent -3 (spec: mmol/L meters use -3/-4): 0xD03E = 62 x 10^-3 -> 62 mmol/L
    m = GlucoseMeasurement.decode(bytes.fromhex("06" + BASE + "3ed0 11"))
    assert m.mmol_per_l == Decimal(62)


@pytest.mark.parametrize("raw", ["ff07", "0008", "fe07", "0208", "0108"])
def test_special_concentration_has_no_value(raw: str) -> None:
    for flags in ("02", "06"):
        data = bytes.fromhex(flags + BASE + raw + "11")
        m = GlucoseMeasurement.decode(data)
        assert m.concentration is not None and m.concentration.special is not None
        assert (m.concentration_value, m.mg_per_dl, m.mmol_per_l) == (None, None, None)
        assert m.encode() == data


def test_unit_flag_is_kept_without_concentration() -> None:
    data = bytes.fromhex("04" + BASE)
    m = GlucoseMeasurement.decode(data)
    assert m.unit is ConcentrationUnit.MOL_PER_L
    assert (m.concentration, m.sample_type_code, m.sample_location_code) == (None, None, None)
    assert (m.concentration_value, m.mmol_per_l, m.sample_type, m.sample_location) == (
        None,
        None,
        None,
        None,
    )
    assert m.encode() == data


@pytest.mark.parametrize(
    ("nibbles", "type_code", "location_code", "control"),
    [
        (0xA1, 1, 10, False),  # location 10 is RFU, type is capillary whole blood
        (0x1A, 10, 1, True),  # type 10 = control solution
        (0x41, 1, 4, True),  # location 4 = control solution
        (0x4A, 10, 4, True),
        (0xF2, 2, 15, False),
    ],
)
def test_control_solution(nibbles: int, type_code: int, location_code: int, control: bool) -> None:
    data = bytes.fromhex("02" + BASE + "6fb0") + bytes([nibbles])
    m = GlucoseMeasurement.decode(data)
    assert (m.sample_type_code, m.sample_location_code) == (type_code, location_code)
    assert m.is_control_solution is control
    assert m.encode() == data


def test_rfu_sample_codes_are_kept() -> None:
    for nibbles in range(256):
        data = bytes.fromhex("02" + BASE + "6fb0") + bytes([nibbles])
        m = GlucoseMeasurement.decode(data)
        assert (m.sample_type_code, m.sample_location_code) == (nibbles & 0xF, nibbles >> 4)
        defined_type = nibbles & 0xF in range(1, 11)
        assert (m.sample_type is not None) is defined_type
        assert (m.sample_location is not None) is (nibbles >> 4 in (1, 2, 3, 4, 15))
        assert m.encode() == data


def test_no_concentration_is_not_control_solution() -> None:
    m = GlucoseMeasurement.decode(bytes.fromhex("00" + BASE))
    assert not m.is_control_solution


@pytest.mark.parametrize(
    ("base_time", "offset", "expected"),
    [
        (DateTime(2024, 1, 1, 0, 2, 0), -5, datetime(2023, 12, 31, 23, 57)),
        (DateTime(2024, 1, 1, 0, 2, 0), None, datetime(2024, 1, 1, 0, 2)),
        (DateTime(2024, 1, 1, 0, 2, 0), -32768, datetime(2023, 12, 9, 5, 54)),
        (DateTime(0, 4, 17, 20, 41, 59), 10, None),  # year unknown
        (DateTime(2024, 0, 17, 20, 41, 59), 10, None),  # month unknown
        (DateTime(9999, 12, 31, 23, 59, 0), 32767, None),  # past datetime.max
    ],
)
def test_user_facing_time(
    base_time: DateTime, offset: int | None, expected: datetime | None
) -> None:
    m = GlucoseMeasurement(sequence_number=1, base_time=base_time, time_offset=offset)
    assert m.user_facing_time == expected
    assert GlucoseMeasurement.decode(m.encode()) == m


def test_negative_time_offset_is_signed() -> None:
    data = bytes.fromhex("01" + BASE + "0080")
    m = GlucoseMeasurement.decode(data)
    assert m.time_offset == -32768
    assert m.encode() == data
    assert GlucoseMeasurement.decode(bytes.fromhex("01" + BASE + "ff7f")).time_offset == 32767


@pytest.mark.parametrize(
    ("bit", "name"),
    [
        (0, "battery_low"),
        (1, "sensor_malfunction"),
        (2, "sample_size_insufficient"),
        (3, "strip_insertion_error"),
        (4, "strip_type_incorrect"),
        (5, "result_too_high"),
        (6, "result_too_low"),
        (7, "temperature_too_high"),
        (8, "temperature_too_low"),
        (9, "read_interrupted"),
        (10, "general_device_fault"),
        (11, "time_fault"),
    ],
)
def test_sensor_status_bits(bit: int, name: str) -> None:
    status = GlucoseSensorStatus.from_raw(1 << bit)
    assert status == GlucoseSensorStatus(**{name: True})
    assert status.raw == 1 << bit


def test_every_sensor_status_word_round_trips() -> None:
    assert GlucoseSensorStatus.from_raw(0xF000) == GlucoseSensorStatus(rfu=0xF000)
    assert all(GlucoseSensorStatus.from_raw(raw).raw == raw for raw in range(0x10000))
    with pytest.raises(ValueError):
        GlucoseSensorStatus.from_raw(0x10000)
    with pytest.raises(ValueError):
        _ = GlucoseSensorStatus(rfu=0x0800).raw


@pytest.mark.parametrize("flags", range(256))
def test_every_flags_byte_round_trips(flags: int) -> None:
    data = bytes([flags]) + bytes.fromhex(BASE)
    if flags & 0x01:
        data += bytes.fromhex("5301")
    if flags & 0x02:
        data += bytes.fromhex("6fb0 11")
    if flags & 0x08:
        data += bytes.fromhex("0500")
    m = GlucoseMeasurement.decode(data)
    assert m.flags == flags
    assert (m.time_offset is not None) == bool(flags & 0x01)
    assert (m.concentration is not None) == bool(flags & 0x02)
    assert (m.sample_type_code is not None) == bool(flags & 0x02)
    assert m.unit is ConcentrationUnit((flags >> 2) & 1)
    assert (m.sensor_status is not None) == bool(flags & 0x08)
    assert m.context_follows == bool(flags & 0x10)
    assert m.rfu_flags == flags & 0xE0
    assert m.trailing == b""
    assert m.encode() == data


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Flags", 0),
        ("00", "Sequence Number", 1),
        ("00 01", "Sequence Number", 1),
        ("00 0100", "Base Time", 3),
        ("00 0100 e807 01 0f 08 1e", "Base Time", 3),
        ("00 0100 e807 0d 0f 08 1e 00", "Base Time.Month", 5),
        ("00 0100 e807 01 0f 18 1e 00", "Base Time.Hours", 7),
        ("00 0100 2c06 01 0f 08 1e 00", "Base Time.Year", 3),  # 1580
        ("00 0100 e907 02 1d 08 1e 00", "Base Time", 3),  # 2025-02-29
        ("01 " + BASE + " 53", "Time Offset", 10),
        ("02 " + BASE, "Glucose Concentration", 10),
        ("02 " + BASE + " 6fb0", "Type-Sample Location", 12),
        ("03 " + BASE + " 5301 6fb0", "Type-Sample Location", 14),
        ("08 " + BASE + " 01", "Sensor Status Annunciation", 10),
        ("0b " + BASE + " 5301 6fb0 11 01", "Sensor Status Annunciation", 15),
    ],
)
def test_malformed_measurement(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        GlucoseMeasurement.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A18",
        field,
        offset,
    )
    assert info.value.payload_hex == bytes.fromhex(hex_value).hex()


def test_error_message_never_contains_values() -> None:
    with pytest.raises(DecodeError) as info:
        GlucoseMeasurement.decode(ALL_FLAGS[:14])
    message = str(info.value)
    assert message == "2A18: field 'Type-Sample Location' at offset 14: needs 1 bytes, 0 left"
    assert ALL_FLAGS[:14].hex() not in message


def _measurement(**kwargs: object) -> GlucoseMeasurement:
    fields: dict[str, object] = {
        "sequence_number": 1,
        "base_time": DateTime(2024, 1, 15, 8, 30, 0),
        **kwargs,
    }
    return GlucoseMeasurement(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rfu_flags": 0x10},
        {"rfu_flags": 0x01},
        {"rfu_flags": 0x100},
        {"sequence_number": 0x10000},
        {"sequence_number": -1},
        {"time_offset": 0x8000},
        {"time_offset": -0x8001},
        {"concentration": MedFloat(111, -5)},  # no type/location
        {"concentration": MedFloat(111, -5), "sample_type_code": 1},
        {"sample_type_code": 1, "sample_location_code": 1},  # no concentration
        {"concentration": MedFloat(111, -5), "sample_type_code": 16, "sample_location_code": 1},
        {"concentration": MedFloat(111, -5), "sample_type_code": 1, "sample_location_code": -1},
        {"concentration": MedFloat(2047, 0), "sample_type_code": 1, "sample_location_code": 1},
        {"sensor_status": GlucoseSensorStatus(rfu=0x0001)},
        {"base_time": DateTime(2024, 2, 30, 0, 0, 0)},
    ],
)
def test_encode_refuses_what_the_wire_cannot_carry(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _measurement(**kwargs).encode()


def test_encode_from_decimal() -> None:
    m = _measurement(
        concentration=MedFloat.from_decimal(Decimal("0.00111"), short=True),
        sample_type_code=SampleType.CAPILLARY_WHOLE_BLOOD,
        sample_location_code=SampleLocation.FINGER,
    )
    assert m.encode() == bytes.fromhex("02" + BASE + "6fb0 11")


@st.composite
def glucose_measurements(draw: st.DrawFn) -> GlucoseMeasurement:
    """Every flag combination: offset, concentration + codes, unit, status, context, RFU."""
    with_concentration = draw(st.booleans())
    return GlucoseMeasurement(
        sequence_number=draw(u16),
        base_time=draw(date_times()),
        time_offset=draw(st.none() | st.integers(-0x8000, 0x7FFF)),
        unit=draw(st.sampled_from(ConcentrationUnit)),
        concentration=draw(sfloats) if with_concentration else None,
        sample_type_code=draw(st.integers(0, 15)) if with_concentration else None,
        sample_location_code=draw(st.integers(0, 15)) if with_concentration else None,
        sensor_status=draw(st.none() | u16.map(GlucoseSensorStatus.from_raw)),
        context_follows=draw(st.booleans()),
        rfu_flags=draw(st.integers(0, 7)) << 5,
        trailing=draw(st.binary(max_size=6)),
    )


@st.composite
def glucose_payloads(draw: st.DrawFn) -> bytes:
    """Valid 0x2A18 bytes for any flags byte (fields laid out as the flags say)."""
    flags = draw(u8)
    out = bytes([flags]) + draw(st.binary(min_size=2, max_size=2)) + draw(date_times()).encode()
    if flags & 0x01:
        out += draw(st.binary(min_size=2, max_size=2))
    if flags & 0x02:
        out += draw(st.binary(min_size=3, max_size=3))
    if flags & 0x08:
        out += draw(st.binary(min_size=2, max_size=2))
    return out + draw(st.binary(max_size=6))


@given(glucose_measurements())
def test_model_round_trip(m: GlucoseMeasurement) -> None:
    assert GlucoseMeasurement.decode(m.encode()) == m


@given(glucose_payloads())
def test_bytes_round_trip(data: bytes) -> None:
    assert GlucoseMeasurement.decode(data).encode() == data


# --- Glucose Measurement Context ---------------------------------------------------------------


def test_context_every_field() -> None:
    c = GlucoseMeasurementContext.decode(CONTEXT_FULL)
    assert c == GlucoseMeasurementContext(
        sequence_number=0x0102,
        extended_flags=0x80,
        carbohydrate_id_code=3,
        carbohydrate=MedFloat(45, -3),
        meal_code=1,
        tester_code=1,
        health_code=5,
        exercise_duration=0xFFFF,
        exercise_intensity=80,
        medication_id_code=1,
        medication=MedFloat(40, -6),
        medication_unit=MedicationUnit.VOLUME,
        hba1c=MedFloat(65, -1),
        trailing=b"\xaa",
    )
    assert c.flags == 0xFF
    assert c.carbohydrate_id is CarbohydrateId.DINNER
    assert c.meal is Meal.PREPRANDIAL
    assert (c.tester, c.health) == (GlucoseTester.SELF, Health.NO_ISSUES)
    assert c.exercise_overrun
    assert c.medication_id is MedicationId.RAPID_ACTING_INSULIN
    assert str(c.hba1c_percent) == "6.5"
    # The amounts stay raw: 45e-3 is 45 g under the legacy XML reading, 0.045 kg under the GSS.
    assert c.carbohydrate is not None and str(c.carbohydrate.value) == "0.045"
    assert c.encode() == CONTEXT_FULL


def test_extended_flags_come_before_carbohydrate() -> None:
    # Reading the carbohydrate first would take 0x00 as the ID and 03 2D as the SFLOAT.
    data = bytes.fromhex("81 0700 00 03 2dd0")
    c = GlucoseMeasurementContext.decode(data)
    assert (c.extended_flags, c.carbohydrate_id_code, c.carbohydrate) == (0, 3, MedFloat(45, -3))
    assert c.encode() == data


def test_context_minimal_and_unit_flag_without_medication() -> None:
    data = bytes.fromhex("20 0900")
    c = GlucoseMeasurementContext.decode(data)
    assert c == GlucoseMeasurementContext(sequence_number=9, medication_unit=MedicationUnit.VOLUME)
    assert (c.carbohydrate_id, c.meal, c.tester, c.health, c.medication_id) == (None,) * 5
    assert (c.exercise_overrun, c.hba1c_percent) == (False, None)
    assert c.encode() == data


def test_context_rfu_codes_are_kept() -> None:
    # carbohydrate ID 0, meal 6, tester 0 / health 14, exercise 0 s, medication ID 9, HbA1c NaN
    data = bytes.fromhex("5f 0100 00 2dd0 06 e0 0000 00 09 28a0 ff07")
    c = GlucoseMeasurementContext.decode(data)
    assert (c.carbohydrate_id_code, c.meal_code, c.tester_code, c.health_code) == (0, 6, 0, 14)
    assert (c.carbohydrate_id, c.meal, c.tester, c.health, c.medication_id) == (None,) * 5
    assert c.medication_id_code == 9
    assert not c.exercise_overrun
    assert c.hba1c is not None and c.hba1c.special is Special.NAN
    assert c.hba1c_percent is None
    assert c.encode() == data


@pytest.mark.parametrize("flags", range(256))
def test_context_every_flags_byte_round_trips(flags: int) -> None:
    data = bytes([flags]) + bytes.fromhex("0201")
    parts = [
        (0x80, "80"),
        (0x01, "03 2dd0"),
        (0x02, "01"),
        (0x04, "51"),
        (0x08, "ffff 50"),
        (0x10, "01 28a0"),
        (0x40, "41f0"),
    ]
    for bit, hex_part in parts:
        if flags & bit:
            data += bytes.fromhex(hex_part)
    c = GlucoseMeasurementContext.decode(data)
    assert c.flags == flags
    assert (c.extended_flags is not None) == bool(flags & 0x80)
    assert (c.carbohydrate is not None) == bool(flags & 0x01)
    assert (c.meal_code is not None) == bool(flags & 0x02)
    assert (c.tester_code is not None) == bool(flags & 0x04)
    assert (c.exercise_duration is not None) == bool(flags & 0x08)
    assert (c.medication is not None) == bool(flags & 0x10)
    assert c.medication_unit is MedicationUnit((flags >> 5) & 1)
    assert (c.hba1c is not None) == bool(flags & 0x40)
    assert c.trailing == b""
    assert c.encode() == data


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Flags", 0),
        ("00 02", "Sequence Number", 1),
        ("80 0201", "Extended Flags", 3),
        ("01 0201", "Carbohydrate ID", 3),
        ("01 0201 03 2d", "Carbohydrate", 4),
        ("81 0201 80 03", "Carbohydrate", 5),
        ("02 0201", "Meal", 3),
        ("04 0201", "Tester-Health", 3),
        ("08 0201 ff", "Exercise Duration", 3),
        ("08 0201 ffff", "Exercise Intensity", 5),
        ("10 0201", "Medication ID", 3),
        ("10 0201 01 28", "Medication", 4),
        ("40 0201 41", "HbA1c", 3),
        ("ff 0201 80 03 2dd0 01 51 ffff 50 01 28a0 41", "HbA1c", 15),
    ],
)
def test_malformed_context(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        GlucoseMeasurementContext.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A34",
        field,
        offset,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"carbohydrate_id_code": 1},
        {"carbohydrate": MedFloat(45, -3)},
        {"tester_code": 1},
        {"health_code": 1},
        {"exercise_duration": 60},
        {"exercise_intensity": 60},
        {"medication_id_code": 1},
        {"medication": MedFloat(40, -6)},
        {"tester_code": 16, "health_code": 1},
        {"tester_code": 1, "health_code": 16},
        {"exercise_duration": 0x10000, "exercise_intensity": 1},
        {"exercise_duration": 1, "exercise_intensity": 0x100},
        {"extended_flags": 0x100},
        {"meal_code": -1},
        {"carbohydrate_id_code": 0x100, "carbohydrate": MedFloat(45, -3)},
        {"hba1c": MedFloat(1, 8)},
        {"sequence_number": 0x10000},
    ],
)
def test_context_encode_refuses_what_the_wire_cannot_carry(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"sequence_number": 1, **kwargs}
    with pytest.raises(ValueError):
        GlucoseMeasurementContext(**fields).encode()  # type: ignore[arg-type]


@st.composite
def glucose_contexts(draw: st.DrawFn) -> GlucoseMeasurementContext:
    """Every flag combination, RFU codes, specials and trailing bytes included."""
    carbohydrate = draw(st.booleans())
    tester_health = draw(st.booleans())
    exercise = draw(st.booleans())
    medication = draw(st.booleans())
    return GlucoseMeasurementContext(
        sequence_number=draw(u16),
        extended_flags=draw(st.none() | u8),
        carbohydrate_id_code=draw(u8) if carbohydrate else None,
        carbohydrate=draw(sfloats) if carbohydrate else None,
        meal_code=draw(st.none() | u8),
        tester_code=draw(st.integers(0, 15)) if tester_health else None,
        health_code=draw(st.integers(0, 15)) if tester_health else None,
        exercise_duration=draw(u16) if exercise else None,
        exercise_intensity=draw(u8) if exercise else None,
        medication_id_code=draw(u8) if medication else None,
        medication=draw(sfloats) if medication else None,
        medication_unit=draw(st.sampled_from(MedicationUnit)),
        hba1c=draw(st.none() | sfloats),
        trailing=draw(st.binary(max_size=6)),
    )


@st.composite
def glucose_context_payloads(draw: st.DrawFn) -> bytes:
    """Valid 0x2A34 bytes for any flags byte (every field is plain bytes, so any fill works)."""
    flags = draw(u8)
    size = 2
    for bit, width in ((0x80, 1), (0x01, 3), (0x02, 1), (0x04, 1), (0x08, 3), (0x10, 3), (0x40, 2)):
        if flags & bit:
            size += width
    return bytes([flags]) + draw(st.binary(min_size=size, max_size=size + 6))


@given(glucose_contexts())
def test_context_model_round_trip(c: GlucoseMeasurementContext) -> None:
    assert GlucoseMeasurementContext.decode(c.encode()) == c


@given(glucose_context_payloads())
def test_context_bytes_round_trip(data: bytes) -> None:
    assert GlucoseMeasurementContext.decode(data).encode() == data


# --- Glucose Feature ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bit", "name"),
    list(enumerate(FEATURE_KEYS.values())),
)
def test_feature_bits(bit: int, name: str) -> None:
    f = GlucoseFeature.decode((1 << bit).to_bytes(2, "little"))
    assert f == GlucoseFeature(**{name: True})  # type: ignore[arg-type]
    assert f.bits == 1 << bit


def test_feature_rfu_bits_and_trailing_are_kept() -> None:
    data = bytes.fromhex("00f8 0102")
    f = GlucoseFeature.decode(data)
    assert f == GlucoseFeature(rfu=0xF800, trailing=b"\x01\x02")
    assert f.encode() == data


@pytest.mark.parametrize("hex_value", ["", "ff"])
def test_feature_too_short(hex_value: str) -> None:
    with pytest.raises(DecodeError) as info:
        GlucoseFeature.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A51",
        "Glucose Feature",
        0,
    )


@pytest.mark.parametrize("rfu", [0x0400, 0x0001, 0x10000])
def test_feature_encode_refuses_rfu_outside_mask(rfu: int) -> None:
    with pytest.raises(ValueError):
        GlucoseFeature(rfu=rfu).encode()


def test_feature_every_word_round_trips() -> None:
    for bits in range(0x10000):
        data = bits.to_bytes(2, "little")
        assert GlucoseFeature.decode(data).encode() == data


glucose_features = st.builds(
    GlucoseFeature,
    **{name: st.booleans() for name in FEATURE_KEYS.values()},
    rfu=st.integers(0, 0x1F).map(lambda bits: bits << 11),
    trailing=st.binary(max_size=6),
)


@given(glucose_features)
def test_feature_round_trip(f: GlucoseFeature) -> None:
    assert GlucoseFeature.decode(f.encode()) == f


# --- JSON and fuzz -----------------------------------------------------------------------------


def test_json_keeps_exponents_and_raw_codes() -> None:
    out = to_jsonable(GlucoseMeasurement.decode(ALL_FLAGS))
    assert isinstance(out, dict)
    assert out["concentration"] == {
        "mantissa": 56,
        "exponent": -4,
        "special": None,
        "values": {"value": "0.0056"},
    }
    assert (out["unit"], out["sample_type_code"], out["sample_location_code"]) == (
        "MOL_PER_L",
        9,
        2,
    )
    assert out["base_time"]["iso"] == "2024-02-29T23:59:58"
    assert out["sensor_status"]["rfu"] == 0xF000
    context = to_jsonable(GlucoseMeasurementContext.decode(CONTEXT_FULL))
    assert isinstance(context, dict)
    assert context["medication"]["mantissa"] == 40 and context["medication_unit"] == "VOLUME"


FUZZ_RUNS = 100_000
FUZZ_VALID = {
    "2A18": [ALL_FLAGS, SPEC_MG, *(bytes.fromhex(v["hex"]) for v in VECTORS[:2])],
    "2A34": [CONTEXT_FULL, bytes.fromhex("02070002"), bytes.fromhex("011500013280")],
    "2A51": [bytes.fromhex("f003"), bytes.fromhex("ff07")],
}
FUZZ_DECODERS = {
    "2A18": GlucoseMeasurement.decode,
    "2A34": GlucoseMeasurementContext.decode,
    "2A51": GlucoseFeature.decode,
}


@pytest.mark.parametrize("uuid", sorted(FUZZ_VALID))
def test_fuzz_only_decode_errors(uuid: str) -> None:
    decoded = assert_only_decode_errors(
        f"glucose-{uuid}", FUZZ_DECODERS[uuid], FUZZ_VALID[uuid], FUZZ_RUNS
    )
    assert decoded > FUZZ_RUNS // 100  # the loop reaches the deep fields, not just errors
