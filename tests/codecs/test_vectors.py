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
    DecodeError,
    MedFloat,
    Special,
    SystemId,
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


CHECKS: dict[str, Callable[[bytes, dict[str, Any]], None]] = {
    "SFLOAT": lambda data, expected: check_medfloat(data, expected, short=True),
    "FLOAT": lambda data, expected: check_medfloat(data, expected, short=False),
    "0x2A9D": check_weight,
    "0x2A9E": check_feature,
    "0x2A08": check_date_time,
    "0x2A23": check_system_id,
    "0x2A29": check_manufacturer,
    "0x2A19": check_battery,
}


def test_vector_file_covers_every_characteristic_and_keeps_provenance() -> None:
    assert {v["characteristic"] for v in VECTORS} == set(CHECKS)
    assert len(VECTORS) == 31
    for vector in VECTORS:
        assert vector["source"] and vector["provenance"] in {"literal", "assembled", "derived"}
        assert "uncertain" in vector


@pytest.mark.parametrize(
    "vector", VECTORS, ids=[f"{v['characteristic']}-{v['hex']}" for v in VECTORS]
)
def test_public_vector(vector: dict[str, Any]) -> None:
    CHECKS[vector["characteristic"]](bytes.fromhex(vector["hex"]), vector["expected"])
