"""Temperature Measurement (0x2A1C), Intermediate Temperature (0x2A1E), Temperature Type
(0x2A1D) and Measurement Interval (0x2A21).

The public vectors for these characteristics are checked in test_vectors.py (vectors.json).
"""

from __future__ import annotations

from decimal import Decimal
from typing import cast

import pytest
from hypothesis import given

from drivers.codecs import (
    DECODERS,
    DateTime,
    DecodeError,
    IntermediateTemperature,
    MeasurementInterval,
    MedFloat,
    Special,
    TemperatureMeasurement,
    TemperatureSite,
    TemperatureType,
    TemperatureUnit,
    to_jsonable,
)

from .fuzzing import assert_only_decode_errors
from .strategies import intermediate_temperatures, temperature_measurements, temperature_payloads

# Nordic: flags 0x06 (Celsius, time stamp, type); FLOAT B0 0E 00 FE = 0xFE000EB0 = 3760 x 10^-2
# = 37.60; 2012-12-05 11:50:27; type 4 (finger).
NORDIC = bytes.fromhex("06 b00e00fe dc07 0c 05 0b 32 1b 04")

# Hand-computed, flags 0xFF: Fahrenheit + time stamp + type + every RFU bit;
# DA 03 00 FF = 986 x 10^-1 = 98.6 F; 2024-02-29 23:59:58; type 6 (mouth); 2 trailing bytes.
ALL_FLAGS = bytes.fromhex("ff da0300ff e807 02 1d 17 3b 3a 06 aabb")

TEMPERATURE_MODELS = (TemperatureMeasurement, IntermediateTemperature)


def test_nordic_measurement_keeps_two_decimals() -> None:
    m = TemperatureMeasurement.decode(NORDIC)
    assert m == TemperatureMeasurement(
        unit=TemperatureUnit.CELSIUS,
        temperature=MedFloat(3760, -2),
        timestamp=DateTime(2012, 12, 5, 11, 50, 27),
        temperature_type=4,
    )
    assert str(m.temperature_value) == "37.60"
    assert m.temperature_unit == "Cel"
    assert m.site is TemperatureSite.FINGER
    assert m.temperature_type_text == "finger"
    assert m.flags == 0x06
    assert m.encode() == NORDIC


def test_spec_example_minimal() -> None:
    # 6C 01 00 FF = 364 x 10^-1 = 36.4 (spec §1.3)
    m = TemperatureMeasurement.decode(bytes.fromhex("00 6c0100ff"))
    assert str(m.temperature_value) == "36.4"
    assert (m.timestamp, m.temperature_type, m.site, m.temperature_type_text) == (
        None,
        None,
        None,
        None,
    )


def test_every_flag_rfu_bits_and_trailing() -> None:
    m = TemperatureMeasurement.decode(ALL_FLAGS)
    assert m.unit is TemperatureUnit.FAHRENHEIT
    assert (str(m.temperature_value), m.temperature_unit) == ("98.6", "[degF]")
    assert m.timestamp == DateTime(2024, 2, 29, 23, 59, 58)
    assert m.site is TemperatureSite.MOUTH
    assert m.rfu_flags == 0xF8
    assert m.trailing == b"\xaa\xbb"
    assert m.flags == 0xFF
    assert m.encode() == ALL_FLAGS


def test_negative_temperature_sign_extends_the_mantissa() -> None:
    # -125 x 10^-1: mantissa 0xFFFF83 (24-bit two's complement), exponent 0xFF
    data = bytes.fromhex("00 83ffffff")
    m = TemperatureMeasurement.decode(data)
    assert m.temperature == MedFloat(-125, -1)
    assert str(m.temperature_value) == "-12.5"
    assert m.encode() == data


@pytest.mark.parametrize(
    ("raw", "special"),
    [
        ("ffff7f00", Special.NAN),
        ("00008000", Special.NRES),
        ("feff7f00", Special.POSITIVE_INFINITY),
        ("02008000", Special.NEGATIVE_INFINITY),
        ("01008000", Special.RESERVED),
    ],
)
def test_special_temperature_stays_explicit(raw: str, special: Special) -> None:
    data = bytes.fromhex("00" + raw)
    m = TemperatureMeasurement.decode(data)
    assert m.temperature.special is special
    assert m.temperature_value is None
    assert m.encode() == data


@pytest.mark.parametrize("code", [0, 10, 0xFF])
def test_reserved_temperature_type_is_kept_not_refused(code: int) -> None:
    data = bytes([0x04]) + bytes.fromhex("6c0100ff") + bytes([code])
    m = TemperatureMeasurement.decode(data)
    assert m.temperature_type == code
    assert m.site is None
    assert m.temperature_type_text == "reserved"
    assert m.encode() == data


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Flags", 0),
        ("00", "Temperature", 1),
        ("00 6c0100", "Temperature", 1),
        ("02 6c0100ff e807 02 1d 17 3b", "Time Stamp", 5),
        ("04 6c0100ff", "Temperature Type", 5),
        ("06 6c0100ff e807 02 1d 17 3b 3a", "Temperature Type", 12),
        ("02 6c0100ff e807 02 1d 17 3b 3c", "Time Stamp.Seconds", 11),
        ("02 6c0100ff 0100 02 1d 17 3b 3a", "Time Stamp.Year", 5),
        ("02 6c0100ff e807 04 1f 17 3b 3a", "Time Stamp", 5),  # April 31
    ],
)
@pytest.mark.parametrize("model", TEMPERATURE_MODELS)
def test_malformed_temperature(
    model: type[TemperatureMeasurement | IntermediateTemperature],
    hex_value: str,
    field: str,
    offset: int,
) -> None:
    with pytest.raises(DecodeError) as info:
        model.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        model.CHARACTERISTIC,
        field,
        offset,
    )
    assert info.value.payload_hex == bytes.fromhex(hex_value).hex()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rfu_flags": 0x04},
        {"rfu_flags": 0x100},
        {"temperature_type": 0x100},
        {"temperature_type": -1},
        {"temperature": MedFloat(1 << 23, -1)},
        {"temperature": MedFloat(1, 128)},
        {"temperature": MedFloat(0x7FFFFF, 0)},  # collides with NaN
        {"timestamp": DateTime(2023, 2, 29, 0, 0, 0)},
    ],
)
def test_encode_refuses_what_the_wire_cannot_carry(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "unit": TemperatureUnit.CELSIUS,
        "temperature": MedFloat(364, -1),
        **kwargs,
    }
    with pytest.raises(ValueError):
        TemperatureMeasurement(**fields).encode()  # type: ignore[arg-type]


def test_encode_from_decimal() -> None:
    m = TemperatureMeasurement(
        unit=TemperatureUnit.CELSIUS,
        temperature=MedFloat.from_decimal(Decimal("37.60"), short=False),
    )
    assert m.encode() == bytes.fromhex("00 b00e00fe")


@pytest.mark.parametrize("flags", range(256))
def test_every_flags_byte_round_trips(flags: int) -> None:
    data = bytes([flags]) + bytes.fromhex("b00e00fe")
    if flags & 0x02:
        data += bytes.fromhex("dc07 0c 05 0b 32 1b")
    if flags & 0x04:
        data += b"\x02"
    for model in TEMPERATURE_MODELS:
        m = model.decode(data)
        assert m.flags == flags
        assert m.unit is TemperatureUnit(flags & 1)
        assert (m.timestamp is not None) == bool(flags & 0x02)
        assert (m.temperature_type is not None) == bool(flags & 0x04)
        assert m.rfu_flags == flags & 0xF8
        assert m.trailing == b""
        assert m.encode() == data


def test_intermediate_is_a_distinct_type() -> None:
    intermediate = DECODERS["2A1E"](NORDIC)
    final = DECODERS["2A1C"](NORDIC)
    assert isinstance(intermediate, IntermediateTemperature)
    assert not isinstance(intermediate, TemperatureMeasurement)
    assert isinstance(final, TemperatureMeasurement)
    assert intermediate != cast(object, final)  # same fields, different record kind
    assert intermediate.temperature == final.temperature


@given(temperature_measurements)
def test_model_round_trip(m: TemperatureMeasurement) -> None:
    assert TemperatureMeasurement.decode(m.encode()) == m


@given(intermediate_temperatures)
def test_intermediate_model_round_trip(m: IntermediateTemperature) -> None:
    assert IntermediateTemperature.decode(m.encode()) == m


@given(temperature_payloads())
def test_bytes_round_trip(data: bytes) -> None:
    assert TemperatureMeasurement.decode(data).encode() == data
    assert IntermediateTemperature.decode(data).encode() == data


# --- Temperature Type --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "site", "text"),
    [
        (0, None, "reserved"),
        (1, TemperatureSite.ARMPIT, "armpit"),
        (2, TemperatureSite.BODY, "body (general)"),
        (3, TemperatureSite.EAR, "ear (usually earlobe)"),
        (4, TemperatureSite.FINGER, "finger"),
        (5, TemperatureSite.GASTROINTESTINAL_TRACT, "gastro-intestinal tract"),
        (6, TemperatureSite.MOUTH, "mouth"),
        (7, TemperatureSite.RECTUM, "rectum"),
        (8, TemperatureSite.TOE, "toe"),
        (9, TemperatureSite.TYMPANUM, "tympanum (ear drum)"),
        (10, None, "reserved"),
        (255, None, "reserved"),
    ],
)
def test_temperature_type_table(code: int, site: TemperatureSite | None, text: str) -> None:
    t = TemperatureType.decode(bytes([code]))
    assert (t.code, t.site, t.text) == (code, site, text)
    assert t.encode() == bytes([code])


@pytest.mark.parametrize(("hex_value", "offset"), [("", 0), ("0300", 1), ("030000", 1)])
def test_temperature_type_is_exactly_one_byte(hex_value: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        TemperatureType.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A1D",
        "Temperature Type",
        offset,
    )


@pytest.mark.parametrize("code", [-1, 256])
def test_temperature_type_encode_refuses_overflow(code: int) -> None:
    with pytest.raises(ValueError):
        TemperatureType(code).encode()


# --- Measurement Interval ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hex_value", "seconds", "periodic"),
    [("3c00", 60, True), ("0000", 0, False), ("0100", 1, True), ("ffff", 65535, True)],
)
def test_measurement_interval(hex_value: str, seconds: int, periodic: bool) -> None:
    interval = MeasurementInterval.decode(bytes.fromhex(hex_value))
    assert (interval.seconds, interval.periodic) == (seconds, periodic)
    assert interval.encode() == bytes.fromhex(hex_value)


@pytest.mark.parametrize(("hex_value", "offset"), [("", 0), ("3c", 0), ("3c0000", 2)])
def test_measurement_interval_is_exactly_two_bytes(hex_value: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        MeasurementInterval.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A21",
        "Measurement Interval",
        offset,
    )


@pytest.mark.parametrize("seconds", [-1, 0x10000])
def test_measurement_interval_encode_refuses_overflow(seconds: int) -> None:
    with pytest.raises(ValueError):
        MeasurementInterval(seconds).encode()


def test_every_type_and_interval_round_trips() -> None:
    for code in range(256):
        assert TemperatureType.decode(bytes([code])).encode() == bytes([code])
    for seconds in range(0x10000):
        data = seconds.to_bytes(2, "little")
        assert MeasurementInterval.decode(data).seconds == seconds
        assert MeasurementInterval(seconds).encode() == data


# --- JSON and fuzz -----------------------------------------------------------------------------


def test_json_keeps_exponents() -> None:
    out = to_jsonable(TemperatureMeasurement.decode(NORDIC))
    assert isinstance(out, dict)
    assert out["temperature"] == {
        "mantissa": 3760,
        "exponent": -2,
        "special": None,
        "values": {"value": "37.60"},
    }
    assert out["temperature_type"] == 4
    assert out["values"] == {
        "flags": 0x06,
        "temperature_value": "37.60",
        "temperature_unit": "Cel",
        "site": "FINGER",
        "temperature_type_text": "finger",
    }
    intermediate = to_jsonable(IntermediateTemperature.decode(bytes.fromhex("01 ffff7f00")))
    assert isinstance(intermediate, dict)
    assert intermediate["temperature"]["special"] == "nan"
    assert intermediate["values"]["temperature_value"] is None
    assert intermediate["values"]["temperature_unit"] == "[degF]"
    assert to_jsonable(TemperatureType(11)) == {
        "code": 11,
        "values": {"site": None, "text": "reserved"},
    }
    assert to_jsonable(MeasurementInterval(0)) == {"seconds": 0, "values": {"periodic": False}}


FUZZ_RUNS = 100_000
FUZZ_VALID = {
    "2A1C": [NORDIC, ALL_FLAGS, bytes.fromhex("00 6c0100ff")],
    "2A1E": [NORDIC, bytes.fromhex("01 83ffffff")],
    "2A1D": [b"\x03"],
    "2A21": [bytes.fromhex("3c00")],
}


@pytest.mark.parametrize("uuid", sorted(FUZZ_VALID))
def test_fuzz_only_decode_errors(uuid: str) -> None:
    decoded = assert_only_decode_errors(
        f"health-thermometer-{uuid}", DECODERS[uuid], FUZZ_VALID[uuid], FUZZ_RUNS
    )
    assert decoded > FUZZ_RUNS // 1000  # some payloads get through to the re-encode check
