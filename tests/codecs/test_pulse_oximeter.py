"""PLX Spot-check Measurement (0x2A5E), PLX Continuous Measurement (0x2A5F), PLX Features (0x2A60).

The public vectors for these characteristics are copied, with their provenance, into
vectors_bcs_plx.json and checked here key by key.
"""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.codecs.date_time import DateTime
from drivers.codecs.errors import DecodeError
from drivers.codecs.ieee11073 import MedFloat, Special, sfloat_from_raw
from drivers.codecs.jsonable import to_jsonable
from drivers.codecs.pulse_oximeter import (
    PlxContinuous,
    PlxDeviceSensorStatus,
    PlxFeatures,
    PlxMeasurementStatus,
    PlxSpotCheck,
    SpO2PulseRate,
)

from .fuzzing import assert_only_decode_errors
from .strategies import date_times, u16

ALL_VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors_bcs_plx.json").read_text("utf-8")
)
VECTORS = [v for v in ALL_VECTORS if v["characteristic"] in {"0x2A5E", "0x2A5F", "0x2A60"}]

MEASUREMENT_STATUS_BITS = (
    (5, "measurement_ongoing"),
    (6, "early_estimated_data"),
    (7, "validated_data"),
    (8, "fully_qualified_data"),
    (9, "data_from_measurement_storage"),
    (10, "data_for_demonstration"),
    (11, "data_for_testing"),
    (12, "calibration_ongoing"),
    (13, "measurement_unavailable"),
    (14, "questionable_measurement"),
    (15, "invalid_measurement"),
)
DEVICE_STATUS_BITS = tuple(
    enumerate(
        (
            "extended_display_update_ongoing",
            "equipment_malfunction",
            "signal_processing_irregularity",
            "inadequate_signal",
            "poor_signal",
            "low_perfusion",
            "erratic_signal",
            "nonpulsatile_signal",
            "questionable_pulse",
            "signal_analysis_ongoing",
            "sensor_interference",
            "sensor_unconnected_to_user",
            "unknown_sensor_connected",
            "sensor_displaced",
            "sensor_malfunctioning",
            "sensor_disconnected",
        )
    )
)

# SpeziBluetooth spot-check vector: flags 0x0F (timestamp, status, device status, PAI);
# AC F3 = 940e-1 = 94.0 %; BE F5 = 1470e-1 = 147.0 bpm; 2024-11-29 23:08:57; status 0x4020;
# device status 0x000022; PAI 66 E3 = 870e-2 = 8.70 %.
SPEZI_SPOT = bytes.fromhex("0f acf3 bef5 e8070b1d170839 2040 220000 66e3")

# Hand-computed, flags 0xF0: device clock not set (b4) + RFU b5-b7, no optional fields;
# SpO2 FF 07 = NaN (sensor searching), PR 48 00 = 72 bpm; 1 trailing byte.
SEARCHING = bytes.fromhex("f0 ff07 4800 aa")

# Hand-computed continuous, every optional field: flags 0x1F; normal 61 00 / 48 00 = 97 % / 72;
# fast 60 00 / 49 00; slow D2 F3 = 978e-1 = 97.8 % / 47 00 = 71; status 0x0080 (validated);
# device status 0x810000: RFU bits 16 and 23 only; PAI 0C F0 = 12e-1 = 1.2 %.
CONTINUOUS_FULL = bytes.fromhex("1f 6100 4800 6000 4900 d2f3 4700 8000 000081 0cf0")


def exact(want: object) -> Decimal:
    return Decimal(str(want))


# --- public vectors ----------------------------------------------------------------------------


def check_named_bits(
    obj: PlxMeasurementStatus | PlxDeviceSensorStatus, want: dict[str, Any]
) -> None:
    """``raw`` plus every named bit listed (the vector lists only the set ones)."""
    assert obj.raw == int(want["raw"], 16)
    named = {name: value for name, value in want.items() if name != "raw"}
    assert all(value is True for value in named.values())
    fields = dataclasses.fields(obj)
    assert set(named) == {f.name for f in fields if f.name != "rfu" and getattr(obj, f.name)}


def check_shared(m: PlxSpotCheck | PlxContinuous, key: str, want: Any) -> bool:
    if key == "flags":
        assert m.flags == int(want, 16)
    elif key == "spo2_pct":
        assert (m.spo2_value, m.percent_unit) == (exact(want), "%")
    elif key == "pulse_rate_bpm":
        assert (m.pulse_rate_value, m.pulse_rate_unit) == (exact(want), "/min")
    elif key == "measurement_status":
        assert m.measurement_status is not None
        check_named_bits(m.measurement_status, want)
    elif key == "device_sensor_status":
        assert m.device_sensor_status is not None
        if isinstance(want, str):
            assert m.device_sensor_status.raw == int(want, 16)
        else:
            check_named_bits(m.device_sensor_status, want)
    elif key == "pulse_amplitude_index_pct":
        assert m.pulse_amplitude_index_value == exact(want)
    else:
        return False
    return True


def check_spot_check(data: bytes, expected: dict[str, Any]) -> None:
    m = PlxSpotCheck.decode(data)
    assert m.flags == data[0]
    for key, want in expected.items():
        if check_shared(m, key, want):
            continue
        if key == "timestamp":
            assert m.timestamp is not None
            wall = m.timestamp.to_datetime()
            assert wall is not None and wall.isoformat() == want
        elif key == "device_clock_not_set":
            assert m.device_clock_not_set is want
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert m.encode() == data


def check_continuous(data: bytes, expected: dict[str, Any]) -> None:
    m = PlxContinuous.decode(data)
    assert m.flags == data[0]
    for key, want in expected.items():
        if not check_shared(m, key, want):
            pytest.fail(f"unchecked expected key {key!r}")
    assert m.encode() == data


def check_features(data: bytes, expected: dict[str, Any]) -> None:
    f = PlxFeatures.decode(data)
    for key, want in expected.items():
        if key == "supported_features":
            assert f.supported_features == int(want["raw"], 16)
            named = {name for name in want if name != "raw"}
            assert all(want[name] is True for name in named)
            booleans = (
                "measurement_status_support_present",
                "device_sensor_status_support_present",
                "spot_check_measurement_storage",
                "spot_check_timestamp",
                "spo2pr_fast",
                "spo2pr_slow",
                "pulse_amplitude_index",
                "multiple_bonds",
            )
            assert named == {name for name in booleans if getattr(f, name)}
        elif key == "measurement_status_support":
            assert f.measurement_status_support is not None
            check_named_bits(f.measurement_status_support, want)
        elif key == "device_sensor_status_support":
            assert f.device_sensor_status_support is not None
            check_named_bits(f.device_sensor_status_support, want)
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert f.encode() == data


CHECKS = {"0x2A5E": check_spot_check, "0x2A5F": check_continuous, "0x2A60": check_features}


def test_vector_file_holds_only_these_families_and_keeps_provenance() -> None:
    families = {"0x2A9C", "0x2A9B", "0x2A5E", "0x2A5F", "0x2A60"}
    assert {v["characteristic"] for v in ALL_VECTORS} == families
    assert sorted(v["characteristic"] for v in VECTORS) == ["0x2A5E", "0x2A5F", "0x2A5F", "0x2A60"]
    for vector in ALL_VECTORS:
        assert vector["source"] and vector["provenance"] in {"literal", "assembled", "derived"}
        assert "uncertain" in vector


@pytest.mark.parametrize("vector", VECTORS, ids=[v["hex"] for v in VECTORS])
def test_public_vector(vector: dict[str, Any]) -> None:
    CHECKS[vector["characteristic"]](bytes.fromhex(vector["hex"]), vector["expected"])


def test_non_canonical_sfloats_keep_their_encoding() -> None:
    # E8 F3 is 1000e-1: equal to 100, but kept as sent (spec §1.2) so it re-encodes identically.
    m = PlxContinuous.decode(bytes.fromhex("00e8f384f3"))
    assert m.spo2 == MedFloat(1000, -1) and str(m.spo2_value) == "100.0"
    assert m.pulse_rate == MedFloat(900, -1)


# --- spot-check --------------------------------------------------------------------------------


def test_spezi_spot_check_in_full() -> None:
    m = PlxSpotCheck.decode(SPEZI_SPOT)
    assert m == PlxSpotCheck(
        spo2=MedFloat(940, -1),
        pulse_rate=MedFloat(1470, -1),
        timestamp=DateTime(2024, 11, 29, 23, 8, 57),
        measurement_status=PlxMeasurementStatus(
            measurement_ongoing=True, questionable_measurement=True
        ),
        device_sensor_status=PlxDeviceSensorStatus(equipment_malfunction=True, low_perfusion=True),
        pulse_amplitude_index=MedFloat(870, -2),
    )
    assert str(m.pulse_amplitude_index_value) == "8.70"
    assert not m.is_unusable and not m.is_demonstration_or_testing


def test_searching_sensor_sends_nan_and_clock_not_set() -> None:
    m = PlxSpotCheck.decode(SEARCHING)
    assert m.spo2 == MedFloat(2047, 0, Special.NAN)
    assert m.spo2_value is None  # never 2047 %
    assert m.pulse_rate_value == 72
    assert m.device_clock_not_set
    assert m.rfu_flags == 0xE0
    assert m.trailing == b"\xaa"
    assert (m.timestamp, m.measurement_status, m.device_sensor_status) == (None, None, None)
    assert m.pulse_amplitude_index_value is None
    assert m.flags == 0xF0
    assert m.encode() == SEARCHING


def test_flag_positions_differ_between_spot_check_and_continuous() -> None:
    # Flags 0x01: a 7-octet timestamp for a spot check, an SpO2PR-Fast pair for continuous.
    spot = PlxSpotCheck.decode(bytes.fromhex("01 6100 4800 e807021d173b3a"))
    assert spot.timestamp == DateTime(2024, 2, 29, 23, 59, 58)
    cont = PlxContinuous.decode(bytes.fromhex("01 6100 4800 6000 4900"))
    assert cont.fast == SpO2PulseRate(MedFloat(96, 0), MedFloat(73, 0))
    # Flags 0x10: clock not set for a spot check, a pulse amplitude index for continuous.
    assert PlxSpotCheck.decode(bytes.fromhex("10 6100 4800")).device_clock_not_set
    assert PlxContinuous.decode(bytes.fromhex("10 6100 4800 0cf0")).pulse_amplitude_index == (
        MedFloat(12, -1)
    )


@pytest.mark.parametrize("flags", range(256))
def test_every_spot_check_flags_byte_round_trips(flags: int) -> None:
    data = bytes([flags]) + bytes.fromhex("6100 4800")
    if flags & 0x01:
        data += bytes.fromhex("e807021d173b3a")
    if flags & 0x02:
        data += bytes.fromhex("2040")
    if flags & 0x04:
        data += bytes.fromhex("220000")
    if flags & 0x08:
        data += bytes.fromhex("66e3")
    m = PlxSpotCheck.decode(data)
    assert m.flags == flags
    assert (m.timestamp is not None) == bool(flags & 0x01)
    assert (m.measurement_status is not None) == bool(flags & 0x02)
    assert (m.device_sensor_status is not None) == bool(flags & 0x04)
    assert (m.pulse_amplitude_index is not None) == bool(flags & 0x08)
    assert m.device_clock_not_set is bool(flags & 0x10)
    assert m.rfu_flags == flags & 0xE0
    assert m.trailing == b""
    assert m.encode() == data


# --- continuous --------------------------------------------------------------------------------


def test_continuous_in_full() -> None:
    m = PlxContinuous.decode(CONTINUOUS_FULL)
    assert m == PlxContinuous(
        spo2=MedFloat(97, 0),
        pulse_rate=MedFloat(72, 0),
        fast=SpO2PulseRate(MedFloat(96, 0), MedFloat(73, 0)),
        slow=SpO2PulseRate(MedFloat(978, -1), MedFloat(71, 0)),
        measurement_status=PlxMeasurementStatus(validated_data=True),
        device_sensor_status=PlxDeviceSensorStatus(rfu=0x810000),
        pulse_amplitude_index=MedFloat(12, -1),
    )
    assert m.slow is not None and str(m.slow.spo2_value) == "97.8"
    assert m.slow.pulse_rate_value == 71
    assert (m.spo2_value, m.pulse_rate_value) == (Decimal(97), Decimal(72))
    assert (m.percent_unit, m.pulse_rate_unit) == ("%", "/min")
    assert str(m.pulse_amplitude_index_value) == "1.2"
    assert not m.is_unusable
    assert m.encode() == CONTINUOUS_FULL


@pytest.mark.parametrize("flags", range(256))
def test_every_continuous_flags_byte_round_trips(flags: int) -> None:
    data = bytes([flags]) + bytes.fromhex("6100 4800")
    if flags & 0x01:
        data += bytes.fromhex("6000 4900")
    if flags & 0x02:
        data += bytes.fromhex("d2f3 4700")
    if flags & 0x04:
        data += bytes.fromhex("8000")
    if flags & 0x08:
        data += bytes.fromhex("000081")
    if flags & 0x10:
        data += bytes.fromhex("0cf0")
    m = PlxContinuous.decode(data)
    assert m.flags == flags
    assert (m.fast is not None) == bool(flags & 0x01)
    assert (m.slow is not None) == bool(flags & 0x02)
    assert (m.measurement_status is not None) == bool(flags & 0x04)
    assert (m.device_sensor_status is not None) == bool(flags & 0x08)
    assert (m.pulse_amplitude_index is not None) == bool(flags & 0x10)
    assert m.rfu_flags == flags & 0xE0
    assert m.trailing == b""
    assert m.encode() == data


# --- status words ------------------------------------------------------------------------------


@pytest.mark.parametrize(("bit", "name"), MEASUREMENT_STATUS_BITS)
def test_measurement_status_bits(bit: int, name: str) -> None:
    status = PlxMeasurementStatus.from_raw(1 << bit)
    assert status == PlxMeasurementStatus(**{name: True})
    assert status.raw == 1 << bit


def test_measurement_status_rfu_bits_and_every_word() -> None:
    assert PlxMeasurementStatus.from_raw(0x001F) == PlxMeasurementStatus(rfu=0x1F)
    assert all(PlxMeasurementStatus.from_raw(raw).raw == raw for raw in range(0x10000))


@pytest.mark.parametrize(("bit", "name"), DEVICE_STATUS_BITS)
def test_device_sensor_status_bits(bit: int, name: str) -> None:
    status = PlxDeviceSensorStatus.from_raw(1 << bit)
    assert status == PlxDeviceSensorStatus(**{name: True})
    assert status.raw == 1 << bit


def test_device_sensor_status_rfu_bits_and_every_low_word() -> None:
    assert PlxDeviceSensorStatus.from_raw(0xFF0000) == PlxDeviceSensorStatus(rfu=0xFF0000)
    for raw in range(0x10000):
        for high in (0x000000, 0xA50000):
            assert PlxDeviceSensorStatus.from_raw(raw | high).raw == raw | high


@pytest.mark.parametrize(
    ("cls", "raw"),
    [
        (PlxMeasurementStatus, -1),
        (PlxMeasurementStatus, 0x10000),
        (PlxDeviceSensorStatus, -1),
        (PlxDeviceSensorStatus, 0x1000000),
    ],
)
def test_status_from_raw_refuses_wider_words(
    cls: type[PlxMeasurementStatus | PlxDeviceSensorStatus], raw: int
) -> None:
    with pytest.raises(ValueError):
        cls.from_raw(raw)


@pytest.mark.parametrize(
    "status", [PlxMeasurementStatus(rfu=0x20), PlxDeviceSensorStatus(rfu=0x1)], ids=repr
)
def test_status_raw_refuses_rfu_outside_mask(
    status: PlxMeasurementStatus | PlxDeviceSensorStatus,
) -> None:
    with pytest.raises(ValueError):
        _ = status.raw


@pytest.mark.parametrize(
    ("status", "device", "unusable", "demo"),
    [
        (None, None, False, False),
        (PlxMeasurementStatus(), PlxDeviceSensorStatus(), False, False),
        (PlxMeasurementStatus(measurement_unavailable=True), None, True, False),
        (PlxMeasurementStatus(invalid_measurement=True), None, True, False),
        (PlxMeasurementStatus(questionable_measurement=True), None, False, False),
        (None, PlxDeviceSensorStatus(sensor_displaced=True), True, False),
        (None, PlxDeviceSensorStatus(sensor_disconnected=True), True, False),
        (None, PlxDeviceSensorStatus(sensor_malfunctioning=True, poor_signal=True), False, False),
        (PlxMeasurementStatus(data_for_demonstration=True), None, False, True),
        (PlxMeasurementStatus(data_for_testing=True), None, False, True),
        (PlxMeasurementStatus(rfu=0x1F), PlxDeviceSensorStatus(rfu=0xFF0000), False, False),
    ],
)
def test_unusable_and_demonstration(
    status: PlxMeasurementStatus | None,
    device: PlxDeviceSensorStatus | None,
    unusable: bool,
    demo: bool,
) -> None:
    spot = PlxSpotCheck(
        spo2=MedFloat(97, 0),
        pulse_rate=MedFloat(72, 0),
        measurement_status=status,
        device_sensor_status=device,
    )
    cont = PlxContinuous(
        spo2=MedFloat(97, 0),
        pulse_rate=MedFloat(72, 0),
        measurement_status=status,
        device_sensor_status=device,
    )
    for m in (spot, cont):
        assert (m.is_unusable, m.is_demonstration_or_testing) == (unusable, demo)
        # The verdict survives the wire (bits are carried, not recomputed).
        again = type(m).decode(m.encode())
        assert (again.is_unusable, again.is_demonstration_or_testing) == (unusable, demo)


# --- malformed values and encode refusals ------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "hex_value", "field", "offset"),
    [
        (PlxSpotCheck, "", "Flags", 0),
        (PlxSpotCheck, "00 61", "SpO2", 1),
        (PlxSpotCheck, "00 6100", "PR", 3),
        (PlxSpotCheck, "01 6100 4800 e807021d173b", "Timestamp", 5),
        (PlxSpotCheck, "01 6100 4800 e807 0d 1d 17 3b 3a", "Timestamp.Month", 7),
        (PlxSpotCheck, "01 6100 4800 e807 02 1e 17 3b 3a", "Timestamp", 5),  # Feb 30
        (PlxSpotCheck, "02 6100 4800 20", "Measurement Status", 5),
        (PlxSpotCheck, "03 6100 4800 e807021d173b3a 20", "Measurement Status", 12),
        (PlxSpotCheck, "04 6100 4800 2200", "Device and Sensor Status", 5),
        (PlxSpotCheck, "06 6100 4800 2040 2200", "Device and Sensor Status", 7),
        (PlxSpotCheck, "08 6100 4800 66", "Pulse Amplitude Index", 5),
        (PlxSpotCheck, "0f acf3 bef5 e8070b1d170839 2040 220000 66", "Pulse Amplitude Index", 17),
        (PlxContinuous, "", "Flags", 0),
        (PlxContinuous, "00 6100 48", "SpO2PR-Normal.PR", 3),
        (PlxContinuous, "01 6100 4800", "SpO2PR-Fast.SpO2", 5),
        (PlxContinuous, "01 6100 4800 6000 49", "SpO2PR-Fast.PR", 7),
        (PlxContinuous, "02 6100 4800 d2", "SpO2PR-Slow.SpO2", 5),
        (PlxContinuous, "03 6100 4800 6000 4900 d2f3", "SpO2PR-Slow.PR", 11),
        (PlxContinuous, "04 6100 4800", "Measurement Status", 5),
        (PlxContinuous, "0c 6100 4800 8000 0000", "Device and Sensor Status", 7),
        (
            PlxContinuous,
            "1f 6100 4800 6000 4900 d2f3 4700 8000 000081 0c",
            "Pulse Amplitude Index",
            18,
        ),
    ],
)
def test_malformed_measurement(
    cls: type[PlxSpotCheck | PlxContinuous], hex_value: str, field: str, offset: int
) -> None:
    data = bytes.fromhex(hex_value)
    with pytest.raises(DecodeError) as info:
        cls.decode(data)
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        cls.CHARACTERISTIC,
        field,
        offset,
    )
    assert info.value.payload_hex == data.hex()


def test_error_message_never_contains_values() -> None:
    with pytest.raises(DecodeError) as info:
        PlxSpotCheck.decode(SPEZI_SPOT[:-1])
    assert str(info.value) == (
        "2A5E: field 'Pulse Amplitude Index' at offset 17: needs 2 bytes, 1 left"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rfu_flags": 0x10},  # b4 is device_clock_not_set on a spot check
        {"rfu_flags": 0x01},
        {"rfu_flags": 0x100},
        {"spo2": MedFloat(2048, 0)},
        {"pulse_rate": MedFloat(1, 8)},
        {"pulse_amplitude_index": MedFloat(2047, 0)},  # collides with NaN
        {"measurement_status": PlxMeasurementStatus(rfu=0x8000)},
        {"device_sensor_status": PlxDeviceSensorStatus(rfu=0x1000000)},
        {"timestamp": DateTime(2023, 2, 29, 0, 0, 0)},
    ],
)
def test_spot_check_encode_refuses_what_the_wire_cannot_carry(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"spo2": MedFloat(97, 0), "pulse_rate": MedFloat(72, 0), **kwargs}
    with pytest.raises(ValueError):
        PlxSpotCheck(**fields).encode()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rfu_flags": 0x10},  # b4 is the pulse amplitude index on a continuous value
        {"fast": SpO2PulseRate(MedFloat(-2049, 0), MedFloat(72, 0))},
        {"slow": SpO2PulseRate(MedFloat(97, 0), MedFloat(1, -9))},
        {"measurement_status": PlxMeasurementStatus(rfu=0x20)},
    ],
)
def test_continuous_encode_refuses_what_the_wire_cannot_carry(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"spo2": MedFloat(97, 0), "pulse_rate": MedFloat(72, 0), **kwargs}
    with pytest.raises(ValueError):
        PlxContinuous(**fields).encode()


# --- PLX Features ------------------------------------------------------------------------------


FEATURE_BITS = (
    (2, "spot_check_measurement_storage"),
    (3, "spot_check_timestamp"),
    (4, "spo2pr_fast"),
    (5, "spo2pr_slow"),
    (6, "pulse_amplitude_index"),
    (7, "multiple_bonds"),
)


@pytest.mark.parametrize(("bit", "name"), FEATURE_BITS)
def test_feature_bits(bit: int, name: str) -> None:
    f = PlxFeatures.decode((1 << bit).to_bytes(2, "little"))
    assert f == PlxFeatures(**{name: True})  # type: ignore[arg-type]
    assert f.supported_features == 1 << bit
    assert not f.measurement_status_support_present
    assert not f.device_sensor_status_support_present


def test_features_with_only_the_measurement_status_mask() -> None:
    data = bytes.fromhex("0100 e0ff")
    f = PlxFeatures.decode(data)
    assert f.measurement_status_support == PlxMeasurementStatus.from_raw(0xFFE0)
    assert f.device_sensor_status_support is None
    assert f.measurement_status_support_present and not f.device_sensor_status_support_present
    assert f.encode() == data


def test_features_with_only_the_device_status_mask() -> None:
    # b1 alone: the uint24 mask directly follows Supported Features.
    data = bytes.fromhex("0200 00e000")
    f = PlxFeatures.decode(data)
    assert f.measurement_status_support is None
    assert f.device_sensor_status_support == PlxDeviceSensorStatus(
        sensor_displaced=True, sensor_malfunctioning=True, sensor_disconnected=True
    )
    assert f.encode() == data


def test_features_rfu_bits_and_trailing_are_kept() -> None:
    data = bytes.fromhex("00ff 0102")
    f = PlxFeatures.decode(data)
    assert f == PlxFeatures(rfu=0xFF00, trailing=b"\x01\x02")
    assert f.encode() == data


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Supported Features", 0),
        ("a3", "Supported Features", 0),
        ("0100", "Measurement Status Support", 2),
        ("0300 4010", "Device and Sensor Status Support", 4),
        ("0300 4010 8001", "Device and Sensor Status Support", 4),
        ("0200 80", "Device and Sensor Status Support", 2),
    ],
)
def test_malformed_features(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        PlxFeatures.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A60",
        field,
        offset,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rfu": 0x0001},
        {"rfu": 0x10000},
        {"measurement_status_support": PlxMeasurementStatus(rfu=0x40)},
        {"device_sensor_status_support": PlxDeviceSensorStatus(rfu=0x8000)},
    ],
)
def test_features_encode_refuses_what_the_wire_cannot_carry(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PlxFeatures(**kwargs).encode()


def test_features_every_supported_word_round_trips() -> None:
    for bits in range(0x10000):
        data = bits.to_bytes(2, "little")
        if bits & 0x01:
            data += bytes.fromhex("4010")
        if bits & 0x02:
            data += bytes.fromhex("8001a5")
        f = PlxFeatures.decode(data)
        assert f.supported_features == bits
        assert f.encode() == data


# --- hypothesis --------------------------------------------------------------------------------

sfloats = u16.map(sfloat_from_raw)
measurement_statuses = u16.map(PlxMeasurementStatus.from_raw)
device_statuses = st.integers(0, 0xFFFFFF).map(PlxDeviceSensorStatus.from_raw)
pairs = st.builds(SpO2PulseRate, sfloats, sfloats)

spot_checks = st.builds(
    PlxSpotCheck,
    spo2=sfloats,
    pulse_rate=sfloats,
    timestamp=st.none() | date_times(),
    measurement_status=st.none() | measurement_statuses,
    device_sensor_status=st.none() | device_statuses,
    pulse_amplitude_index=st.none() | sfloats,
    device_clock_not_set=st.booleans(),
    rfu_flags=st.integers(0, 7).map(lambda bits: bits << 5),
    trailing=st.binary(max_size=6),
)
continuous_measurements = st.builds(
    PlxContinuous,
    spo2=sfloats,
    pulse_rate=sfloats,
    fast=st.none() | pairs,
    slow=st.none() | pairs,
    measurement_status=st.none() | measurement_statuses,
    device_sensor_status=st.none() | device_statuses,
    pulse_amplitude_index=st.none() | sfloats,
    rfu_flags=st.integers(0, 7).map(lambda bits: bits << 5),
    trailing=st.binary(max_size=6),
)
plx_features = st.builds(
    PlxFeatures,
    **{name: st.booleans() for _, name in FEATURE_BITS},
    rfu=st.integers(0, 0xFF).map(lambda bits: bits << 8),
    measurement_status_support=st.none() | measurement_statuses,
    device_sensor_status_support=st.none() | device_statuses,
    trailing=st.binary(max_size=6),
)


@st.composite
def spot_check_payloads(draw: st.DrawFn) -> bytes:
    """Valid 0x2A5E bytes for any flags byte (fields laid out as the flags say)."""
    flags = draw(st.integers(0, 0xFF))
    out = bytes([flags]) + draw(st.binary(min_size=4, max_size=4))
    if flags & 0x01:
        out += draw(date_times()).encode()
    sizes = ((0x02, 2), (0x04, 3), (0x08, 2))
    for bit, size in sizes:
        if flags & bit:
            out += draw(st.binary(min_size=size, max_size=size))
    return out + draw(st.binary(max_size=6))


@st.composite
def continuous_payloads(draw: st.DrawFn) -> bytes:
    """Valid 0x2A5F bytes for any flags byte."""
    flags = draw(st.integers(0, 0xFF))
    out = bytes([flags]) + draw(st.binary(min_size=4, max_size=4))
    for bit, size in ((0x01, 4), (0x02, 4), (0x04, 2), (0x08, 3), (0x10, 2)):
        if flags & bit:
            out += draw(st.binary(min_size=size, max_size=size))
    return out + draw(st.binary(max_size=6))


@st.composite
def feature_payloads(draw: st.DrawFn) -> bytes:
    """Valid 0x2A60 bytes for any Supported Features word."""
    bits = draw(u16)
    out = bits.to_bytes(2, "little")
    if bits & 0x01:
        out += draw(st.binary(min_size=2, max_size=2))
    if bits & 0x02:
        out += draw(st.binary(min_size=3, max_size=3))
    return out + draw(st.binary(max_size=6))


@given(spot_checks)
def test_spot_check_model_round_trip(m: PlxSpotCheck) -> None:
    assert PlxSpotCheck.decode(m.encode()) == m


@given(spot_check_payloads())
def test_spot_check_bytes_round_trip(data: bytes) -> None:
    assert PlxSpotCheck.decode(data).encode() == data


@given(continuous_measurements)
def test_continuous_model_round_trip(m: PlxContinuous) -> None:
    assert PlxContinuous.decode(m.encode()) == m


@given(continuous_payloads())
def test_continuous_bytes_round_trip(data: bytes) -> None:
    assert PlxContinuous.decode(data).encode() == data


@given(plx_features)
def test_features_model_round_trip(f: PlxFeatures) -> None:
    assert PlxFeatures.decode(f.encode()) == f


@given(feature_payloads())
def test_features_bytes_round_trip(data: bytes) -> None:
    assert PlxFeatures.decode(data).encode() == data


def test_json_form() -> None:
    out = to_jsonable(PlxSpotCheck.decode(SPEZI_SPOT))
    assert isinstance(out, dict)
    assert out["spo2"] == {
        "mantissa": 940,
        "exponent": -1,
        "special": None,
        "values": {"value": "94.0"},
    }
    assert out["measurement_status"]["questionable_measurement"] is True
    assert out["device_sensor_status"]["low_perfusion"] is True
    assert out["timestamp"]["iso"] == "2024-11-29T23:08:57"


# --- fuzz --------------------------------------------------------------------------------------

FUZZ_RUNS = 100_000
FUZZ_VALID: dict[str, tuple[Any, list[bytes]]] = {
    "2A5E": (PlxSpotCheck.decode, [SPEZI_SPOT, SEARCHING, bytes.fromhex("1a 6100 4800 2040 66e3")]),
    "2A5F": (
        PlxContinuous.decode,
        [CONTINUOUS_FULL, bytes.fromhex("00e8f384f3"), bytes.fromhex("1c5f005a00200000000057f0")],
    ),
    "2A60": (PlxFeatures.decode, [bytes.fromhex("a3004010800100"), bytes.fromhex("fc00")]),
}


@pytest.mark.parametrize("uuid", sorted(FUZZ_VALID))
def test_fuzz_only_decode_errors(uuid: str) -> None:
    decode, seeds = FUZZ_VALID[uuid]
    decoded = assert_only_decode_errors(f"pulse-oximeter-{uuid}", decode, seeds, FUZZ_RUNS)
    assert decoded > FUZZ_RUNS // 100  # the loop reaches the deep fields, not just errors
