"""The public vectors (copied with their provenance into vectors.json) decode as recorded.

Every key of every ``expected`` block must be checked by a handler here, so a vector can never
pass by being silently skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from drivers.codecs import (
    DECODERS,
    BloodPressureFeature,
    BloodPressureMeasurement,
    DecodeError,
    IntermediateCuffPressure,
    MeasurementInterval,
    MedFloat,
    PressureUnit,
    PulseRateRange,
    Special,
    SystemId,
    TemperatureMeasurement,
    TemperatureType,
    WeightMeasurement,
    WeightScaleFeature,
    read_float,
    read_sfloat,
)
from drivers.codecs._cursor import Reader

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors.json").read_text(encoding="utf-8")
)

SPECIAL_NAMES = {
    "NaN": Special.NAN,
    "NRes": Special.NRES,
    "+INFINITY": Special.POSITIVE_INFINITY,
    "-INFINITY": Special.NEGATIVE_INFINITY,
    "reserved for future use": Special.RESERVED,
}


def exact(want: object) -> Decimal:
    return Decimal(str(want))


def check_medfloat(data: bytes, expected: dict[str, Any], *, short: bool) -> None:
    reader = Reader(data, "SFLOAT" if short else "FLOAT")
    v: MedFloat = read_sfloat(reader, "value") if short else read_float(reader, "value")
    assert reader.remaining == 0
    for key, want in expected.items():
        if key == "raw":
            assert int.from_bytes(data, "little") == int(want, 16)
        elif key == "mantissa":
            assert v.mantissa == want
        elif key == "exponent":
            assert v.exponent == want
        elif key == "value":
            assert v.special is None
            assert v.value == exact(want)
        elif key == "special":
            assert v.special is SPECIAL_NAMES[want]
            assert v.value is None
        elif key == "note":
            pass  # prose for people
        else:
            pytest.fail(f"unchecked expected key {key!r}")


def check_weight(data: bytes, expected: dict[str, Any]) -> None:
    m = WeightMeasurement.decode(data)
    for key, want in expected.items():
        if key == "flags":
            assert m.flags == int(want, 16) == data[0]
        elif key == "units":
            assert m.units.name == want
        elif key == "weight_kg":
            assert m.weight_unit == "kg"
            assert m.weight == exact(want)
        elif key == "timestamp":
            assert m.timestamp is not None
            wall = m.timestamp.to_datetime()
            assert wall is not None and wall.isoformat() == want
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert m.encode() == data


def check_feature(data: bytes, expected: dict[str, Any]) -> None:
    f = WeightScaleFeature.decode(data)
    actual = {
        "timestamp_supported": f.timestamp_supported,
        "multiple_users_supported": f.multiple_users_supported,
        "bmi_supported": f.bmi_supported,
        "weight_resolution_code": f.weight_resolution,
        "weight_resolution": f.weight_resolution_text,
        "height_resolution_code": f.height_resolution,
        "height_resolution": f.height_resolution_text,
    }
    assert set(expected) <= set(actual), f"unchecked keys {set(expected) - set(actual)}"
    assert {key: actual[key] for key in expected} == expected
    assert f.encode() == data


def check_date_time(data: bytes, expected: dict[str, Any]) -> None:
    assert set(expected) == {"date_time"}
    wall = DECODERS["2A08"](data).to_datetime()  # type: ignore[attr-defined]
    assert wall.isoformat() == expected["date_time"]


def check_system_id(data: bytes, expected: dict[str, Any]) -> None:
    sid = SystemId.decode(data)
    assert set(expected) == {"uint64", "manufacturer_identifier_40bit", "oui_24bit"}
    assert int.from_bytes(data, "little") == int(expected["uint64"], 16)
    assert sid.eui64 == expected["uint64"].removeprefix("0x").upper()
    assert sid.manufacturer_id == int(expected["manufacturer_identifier_40bit"], 16)
    assert sid.oui == int(expected["oui_24bit"], 16)
    assert sid.encode() == data


def check_manufacturer(data: bytes, expected: dict[str, Any]) -> None:
    assert set(expected) == {"manufacturer_name"}
    assert DECODERS["2A29"](data) == expected["manufacturer_name"]


def check_battery(data: bytes, expected: dict[str, Any]) -> None:
    if expected.get("valid") is False:
        assert set(expected) == {"valid", "reason"}
        with pytest.raises(DecodeError) as info:
            DECODERS["2A19"](data)
        assert (info.value.field, info.value.offset) == ("Battery Level", 0)
        assert "reserved" in info.value.reason and "reserved" in expected["reason"]
        return
    assert set(expected) == {"battery_level_pct"}
    assert DECODERS["2A19"](data).percent == expected["battery_level_pct"]  # type: ignore[attr-defined]


def check_bp_timestamp(m: BloodPressureMeasurement | IntermediateCuffPressure, want: Any) -> None:
    ts = m.timestamp
    assert ts is not None
    year = 0 if want["year"] == "unknown (0)" else want["year"]
    assert (ts.year, ts.month, ts.day) == (year, want["month"], want["day"])
    assert f"{ts.hours:02}:{ts.minutes:02}:{ts.seconds:02}" == want["time"]
    assert set(want) == {"year", "month", "day", "time"}


PULSE_RATE_RANGES = {"within range (0)": PulseRateRange.WITHIN_RANGE}


def check_bp_shared(
    m: BloodPressureMeasurement | IntermediateCuffPressure, key: str, want: Any
) -> bool:
    """Keys both 0x2A35 and 0x2A36 use; False when ``key`` is not one of them."""
    if key == "unit":
        assert {"mmHg": PressureUnit.MMHG, "kPa": PressureUnit.KPA}[want] is m.unit
    elif key == "timestamp":
        check_bp_timestamp(m, want)
    elif key == "pulse_rate_bpm":
        assert m.pulse_rate_unit == "/min"
        assert m.pulse_rate_value == exact(want)
    elif key == "user_id":
        assert m.user_id == want
    elif key == "status":
        assert m.status is not None
        status = m.status
        assert set(want) == {
            "body_movement",
            "cuff_too_loose",
            "irregular_pulse",
            "pulse_rate_range",
            "improper_position",
        }
        assert status.body_movement is want["body_movement"]
        assert status.cuff_too_loose is want["cuff_too_loose"]
        assert status.irregular_pulse is want["irregular_pulse"]
        assert status.pulse_rate_range is PULSE_RATE_RANGES[want["pulse_rate_range"]]
        assert status.improper_position is want["improper_position"]
    elif key == "status_raw":
        assert m.status is not None and m.status.raw == int(want, 16)
    else:
        return False
    return True


def check_blood_pressure(data: bytes, expected: dict[str, Any]) -> None:
    m = BloodPressureMeasurement.decode(data)
    for key, want in expected.items():
        if check_bp_shared(m, key, want):
            continue
        if key == "systolic":
            assert m.systolic_value == exact(want)
        elif key == "diastolic":
            assert m.diastolic_value == exact(want)
        elif key == "mean_arterial":
            assert m.mean_arterial_pressure_value == exact(want)
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert m.encode() == data


def check_cuff_pressure(data: bytes, expected: dict[str, Any]) -> None:
    m = IntermediateCuffPressure.decode(data)
    for key, want in expected.items():
        if check_bp_shared(m, key, want):
            continue
        if key == "current_cuff_pressure":
            assert m.cuff_pressure_value == exact(want)
        elif key == "unused_fields_raw":
            assert [int(raw, 16) for raw in want] == [
                int.from_bytes(data[3:5], "little"),
                int.from_bytes(data[5:7], "little"),
            ]
            assert (m.unused_diastolic, m.unused_mean_arterial_pressure) == (
                MedFloat(0, 0),
                MedFloat(0, 0),
            )
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert m.encode() == data


def check_bp_feature(data: bytes, expected: dict[str, Any]) -> None:
    f = BloodPressureFeature.decode(data)
    actual = {
        "body_movement": f.body_movement_detection,
        "cuff_fit": f.cuff_fit_detection,
        "irregular_pulse": f.irregular_pulse_detection,
        "pulse_rate_range": f.pulse_rate_range_detection,
        "measurement_position": f.measurement_position_detection,
        "multiple_bonds": f.multiple_bonds,
        "e2e_crc": f.e2e_crc,
        "user_data_service": f.user_data_service,
        "user_facing_time": f.user_facing_time,
    }
    assert set(expected) <= set(actual), f"unchecked keys {set(expected) - set(actual)}"
    assert {key: actual[key] for key in expected} == expected
    assert f.encode() == data


def check_temperature(data: bytes, expected: dict[str, Any]) -> None:
    m = TemperatureMeasurement.decode(data)
    for key, want in expected.items():
        if key == "unit":
            assert {"Celsius": "Cel", "Fahrenheit": "[degF]"}[want] == m.temperature_unit
        elif key == "temperature":
            assert m.temperature_value == exact(want)
        elif key == "float_raw":
            assert int.from_bytes(data[1:5], "little") == int(want, 16)
        elif key == "timestamp":
            assert m.timestamp is not None
            wall = m.timestamp.to_datetime()
            assert wall is not None and wall.isoformat() == want
        elif key == "temperature_type":
            assert f"{m.temperature_type} {m.temperature_type_text}" == want
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert m.encode() == data


def check_temperature_type(data: bytes, expected: dict[str, Any]) -> None:
    assert set(expected) == {"temperature_type"}
    t = TemperatureType.decode(data)
    assert f"{t.code} {t.text}" == expected["temperature_type"]
    assert t.encode() == data


def check_measurement_interval(data: bytes, expected: dict[str, Any]) -> None:
    assert set(expected) == {"measurement_interval_s"}
    interval = MeasurementInterval.decode(data)
    assert interval.seconds == expected["measurement_interval_s"]
    assert interval.encode() == data


CHECKS: dict[str, Callable[[bytes, dict[str, Any]], None]] = {
    "SFLOAT": lambda data, expected: check_medfloat(data, expected, short=True),
    "FLOAT": lambda data, expected: check_medfloat(data, expected, short=False),
    "0x2A9D": check_weight,
    "0x2A9E": check_feature,
    "0x2A08": check_date_time,
    "0x2A23": check_system_id,
    "0x2A29": check_manufacturer,
    "0x2A19": check_battery,
    "0x2A35": check_blood_pressure,
    "0x2A36": check_cuff_pressure,
    "0x2A49": check_bp_feature,
    "0x2A1C": check_temperature,
    "0x2A1D": check_temperature_type,
    "0x2A21": check_measurement_interval,
}


def test_vector_file_covers_every_characteristic_and_keeps_provenance() -> None:
    assert {v["characteristic"] for v in VECTORS} == set(CHECKS)
    assert len(VECTORS) == 40
    for vector in VECTORS:
        assert vector["source"] and vector["provenance"] in {"literal", "assembled", "derived"}
        assert "uncertain" in vector


@pytest.mark.parametrize(
    "vector", VECTORS, ids=[f"{v['characteristic']}-{v['hex']}" for v in VECTORS]
)
def test_public_vector(vector: dict[str, Any]) -> None:
    CHECKS[vector["characteristic"]](bytes.fromhex(vector["hex"]), vector["expected"])
