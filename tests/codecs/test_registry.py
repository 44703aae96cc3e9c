"""DECODERS (the `edge decode` table) and to_jsonable."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from drivers.codecs import (
    DECODERS,
    BatteryLevel,
    BloodPressureFeature,
    BloodPressureMeasurement,
    DateTime,
    IntermediateCuffPressure,
    IntermediateTemperature,
    MeasurementInterval,
    MedFloat,
    Special,
    SystemId,
    TemperatureMeasurement,
    TemperatureType,
    Units,
    WeightMeasurement,
    WeightScaleFeature,
    decoder_for,
    normalize_uuid,
    to_jsonable,
)

SAMPLES = {
    "2A9D": "0e b036 e807 02 1d 17 3b 3a 03 e500 d406",
    "2A9E": "8f 00 00 00",
    "2A23": "de bc 9a fe ff 56 34 12",
    "2A29": "4f4d524f4e",
    "2A24": "55432d333532424c45",
    "2A25": "3132333435",
    "2A27": "312e30",
    "2A26": "322e3000",
    "2A28": "332e31",
    "2A19": "64",
    "2A08": "e2 07 04 11 0f 33 00",
    "2A35": "de 7800 5000 ff07 e807 02 1d 17 3b 3a 4800 02 8000",
    "2A36": "1e 0400 0000 0000 0000 04 11 14 29 3b 3c00 01 2700",
    "2A49": "ff01",
    "2A1C": "06 b00e00fe dc07 0c 05 0b 32 1b 04",
    "2A1E": "01 83ffffff",
    "2A1D": "03",
    "2A21": "3c00",
    "2A2A": "00000000000000000000000000000000",
    "2A9C": "98037200a21eea017439d62b0212",
    "2A9B": "ff0f0000",
    "2A18": "1b0100e307021b0b0a1efbff1e00120501",
    "2A34": "02070002",
    "2A51": "f003",
    "2A52": "0101",
    "2A5E": "0facf3bef5e8070b1d170839204022000066e3",
    "2A5F": "00e8f384f3",
    "2A60": "a3004010800100",
    "2A2B": "e907010f0e1e2d032101",
    "2A0F": "0400",
    "2A9A": "03",
    "2A99": "01000000",
    "2A9F": "20010103",
    "2AA7": "06000c10050006000c100600",
    "2AA8": "6e9e01168ac1",
    "2AA9": "0600010101",
    "2AAA": "e20704180d08180804e0c2",
    "2AAB": "0200",
    "2AAC": "1c0202a709",
}


def test_registry_keys_are_the_contract() -> None:
    assert set(DECODERS) == set(SAMPLES)
    assert all(key == key.upper() and len(key) == 4 for key in DECODERS)


@pytest.mark.parametrize(("uuid", "hex_value"), sorted(SAMPLES.items()))
def test_every_decoder_output_serialises(uuid: str, hex_value: str) -> None:
    decoded = DECODERS[uuid](bytes.fromhex(hex_value))
    text = json.dumps(to_jsonable(decoded))
    assert json.loads(text) == to_jsonable(decoded)


def test_registry_dispatches_to_the_right_model() -> None:
    assert isinstance(DECODERS["2A9D"](bytes.fromhex("00 8c3c")), WeightMeasurement)
    assert isinstance(DECODERS["2A9E"](bytes(4)), WeightScaleFeature)
    assert isinstance(DECODERS["2A23"](bytes(8)), SystemId)
    assert isinstance(DECODERS["2A19"](b"\x01"), BatteryLevel)
    assert isinstance(DECODERS["2A08"](bytes(7)), DateTime)
    assert DECODERS["2A26"](b"2.0\x00") == "2.0"
    assert isinstance(DECODERS["2A35"](bytes(7)), BloodPressureMeasurement)
    assert isinstance(DECODERS["2A36"](bytes(7)), IntermediateCuffPressure)
    assert isinstance(DECODERS["2A49"](bytes(2)), BloodPressureFeature)
    assert isinstance(DECODERS["2A1C"](bytes(5)), TemperatureMeasurement)
    assert isinstance(DECODERS["2A1E"](bytes(5)), IntermediateTemperature)
    assert isinstance(DECODERS["2A1D"](b"\x02"), TemperatureType)
    assert isinstance(DECODERS["2A21"](bytes(2)), MeasurementInterval)


@pytest.mark.parametrize(
    "text", ["2A9D", "2a9d", "0x2A9D", " 0X2a9d ", "00002a9d-0000-1000-8000-00805f9b34fb"]
)
def test_normalize_uuid(text: str) -> None:
    assert normalize_uuid(text) == "2A9D"
    assert decoder_for(text) is DECODERS["2A9D"]


@pytest.mark.parametrize("text", ["", "2A9", "2A9DX", "12345678-0000-1000-8000-00805f9b34fb"])
def test_normalize_uuid_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        normalize_uuid(text)


def test_decoder_for_unsupported_is_none() -> None:
    assert decoder_for("2A6E") is None  # Temperature (Environmental Sensing): not a health profile


def test_weight_measurement_json_keeps_exponents_and_raw_fields() -> None:
    m = WeightMeasurement.decode(bytes.fromhex(SAMPLES["2A9D"]))
    assert to_jsonable(m) == {
        "units": "SI",
        "weight_raw": 14000,
        "timestamp": {
            "iso": "2024-02-29T23:59:58",
            "year": 2024,
            "month": 2,
            "day": 29,
            "hours": 23,
            "minutes": 59,
            "seconds": 58,
        },
        "user_id": 3,
        "bmi_raw": 229,
        "height_raw": 1748,
        "rfu_flags": 0,
        "trailing": "",
        "values": {
            "flags": 0x0E,
            "unsuccessful": False,
            "weight": "70.000",
            "weight_unit": "kg",
            "bmi": "22.9",
            "bmi_unit": "kg/m2",
            "height": "1.748",
            "height_unit": "m",
            "user_unknown": False,
        },
    }


def test_unsuccessful_imperial_json() -> None:
    out = to_jsonable(WeightMeasurement(units=Units.IMPERIAL, weight_raw=0xFFFF, trailing=b"\xab"))
    assert isinstance(out, dict)
    assert out["units"] == "IMPERIAL"
    assert out["trailing"] == "ab"
    assert out["timestamp"] is None
    assert out["values"]["weight"] is None
    assert out["values"]["unsuccessful"] is True
    assert out["values"]["weight_unit"] == "[lb_av]"


def test_unknown_date_time_json() -> None:
    assert to_jsonable(DateTime(0, 4, 17, 15, 51, 0)) == {
        "iso": None,
        "year": 0,
        "month": 4,
        "day": 17,
        "hours": 15,
        "minutes": 51,
        "seconds": 0,
    }


def test_feature_and_system_id_json_include_computed_text() -> None:
    feature = to_jsonable(WeightScaleFeature.decode(bytes.fromhex("8f000000")))
    assert isinstance(feature, dict)
    assert feature["values"] == {
        "weight_resolution_text": "0.5 kg / 1 lb",
        "height_resolution_text": "0.01 m / 1 in",
    }
    sid = to_jsonable(SystemId(0xFFFE9ABCDE, 0x123456))
    assert isinstance(sid, dict)
    assert sid["values"]["eui64"] == "123456FFFE9ABCDE"


def test_med_float_and_scalars() -> None:
    assert to_jsonable(MedFloat(364, -1)) == {
        "mantissa": 364,
        "exponent": -1,
        "special": None,
        "values": {"value": "36.4"},
    }
    assert to_jsonable(MedFloat(2047, 0, Special.NAN))["special"] == "nan"  # type: ignore[index]
    assert to_jsonable(Decimal("0.000")) == "0.000"
    assert to_jsonable(Decimal(5).scaleb(2)) == "5E+2"
    assert to_jsonable([b"\x01", (Units.SI,)]) == ["01", ["SI"]]
    assert to_jsonable({"a": True}) == {"a": True}


def test_no_json_form_for_unknown_objects() -> None:
    with pytest.raises(TypeError):
        to_jsonable(object())
    with pytest.raises(TypeError):
        to_jsonable(1.5)
