"""Hypothesis strategies for valid codec values (shared by the round-trip tests)."""

from __future__ import annotations

import calendar

from hypothesis import strategies as st

from drivers.codecs import (
    BloodPressureFeature,
    BloodPressureMeasurement,
    DateTime,
    IntermediateCuffPressure,
    IntermediateTemperature,
    MeasurementStatus,
    MedFloat,
    PressureUnit,
    TemperatureMeasurement,
    TemperatureUnit,
    Units,
    WeightMeasurement,
    WeightScaleFeature,
    float_from_raw,
    sfloat_from_raw,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)

# Every raw pattern decodes, specials included, and decoding gives the form encode writes back.
sfloats: st.SearchStrategy[MedFloat] = u16.map(sfloat_from_raw)
floats: st.SearchStrategy[MedFloat] = u32.map(float_from_raw)
measurement_statuses: st.SearchStrategy[MeasurementStatus] = u16.map(MeasurementStatus.from_raw)


@st.composite
def date_times(draw: st.DrawFn) -> DateTime:
    """Any Date Time the decoder accepts, unknown (0) year/month/day included."""
    year = draw(st.one_of(st.just(0), st.integers(1582, 9999)))
    month = draw(st.integers(0, 12))
    last_day = calendar.monthrange(year, month)[1] if year and month else 31
    return DateTime(
        year,
        month,
        draw(st.integers(0, last_day)),
        draw(st.integers(0, 23)),
        draw(st.integers(0, 59)),
        draw(st.integers(0, 59)),
    )


@st.composite
def weight_measurements(draw: st.DrawFn) -> WeightMeasurement:
    """Every flag combination: units, time stamp, user, BMI+height, RFU bits, trailing bytes."""
    with_bmi_height = draw(st.booleans())
    return WeightMeasurement(
        units=draw(st.sampled_from(Units)),
        weight_raw=draw(u16),
        timestamp=draw(st.none() | date_times()),
        user_id=draw(st.none() | u8),
        bmi_raw=draw(u16) if with_bmi_height else None,
        height_raw=draw(u16) if with_bmi_height else None,
        rfu_flags=draw(st.integers(0, 15)) << 4,
        trailing=draw(st.binary(max_size=6)),
    )


@st.composite
def weight_payloads(draw: st.DrawFn) -> bytes:
    """Valid Weight Measurement bytes for any flags byte (fields laid out as the flags say)."""
    flags = draw(u8)
    out = bytes([flags]) + draw(st.binary(min_size=2, max_size=2))
    if flags & 0x02:
        out += draw(date_times()).encode()
    if flags & 0x04:
        out += draw(st.binary(min_size=1, max_size=1))
    if flags & 0x08:
        out += draw(st.binary(min_size=4, max_size=4))
    return out + draw(st.binary(max_size=6))


weight_scale_features = st.builds(
    WeightScaleFeature,
    timestamp_supported=st.booleans(),
    multiple_users_supported=st.booleans(),
    bmi_supported=st.booleans(),
    weight_resolution=st.integers(0, 15),
    height_resolution=st.integers(0, 7),
    rfu=st.integers(0, (1 << 22) - 1).map(lambda bits: bits << 10),
    trailing=st.binary(max_size=6),
)


@st.composite
def blood_pressure_measurements(draw: st.DrawFn) -> BloodPressureMeasurement:
    """Every flag combination: unit, time stamp, pulse, user, status, RFU bits, trailing."""
    return BloodPressureMeasurement(
        unit=draw(st.sampled_from(PressureUnit)),
        systolic=draw(sfloats),
        diastolic=draw(sfloats),
        mean_arterial_pressure=draw(sfloats),
        timestamp=draw(st.none() | date_times()),
        pulse_rate=draw(st.none() | sfloats),
        user_id=draw(st.none() | u8),
        status=draw(st.none() | measurement_statuses),
        rfu_flags=draw(st.integers(0, 7)) << 5,
        trailing=draw(st.binary(max_size=6)),
    )


@st.composite
def cuff_pressures(draw: st.DrawFn) -> IntermediateCuffPressure:
    """Same flag combinations as the measurement, for 0x2A36."""
    return IntermediateCuffPressure(
        unit=draw(st.sampled_from(PressureUnit)),
        cuff_pressure=draw(sfloats),
        unused_diastolic=draw(sfloats),
        unused_mean_arterial_pressure=draw(sfloats),
        timestamp=draw(st.none() | date_times()),
        pulse_rate=draw(st.none() | sfloats),
        user_id=draw(st.none() | u8),
        status=draw(st.none() | measurement_statuses),
        rfu_flags=draw(st.integers(0, 7)) << 5,
        trailing=draw(st.binary(max_size=6)),
    )


@st.composite
def blood_pressure_payloads(draw: st.DrawFn) -> bytes:
    """Valid 0x2A35/0x2A36 bytes for any flags byte (fields laid out as the flags say)."""
    flags = draw(u8)
    out = bytes([flags]) + draw(st.binary(min_size=6, max_size=6))
    if flags & 0x02:
        out += draw(date_times()).encode()
    if flags & 0x04:
        out += draw(st.binary(min_size=2, max_size=2))
    if flags & 0x08:
        out += draw(st.binary(min_size=1, max_size=1))
    if flags & 0x10:
        out += draw(st.binary(min_size=2, max_size=2))
    return out + draw(st.binary(max_size=6))


blood_pressure_features = st.builds(
    BloodPressureFeature,
    body_movement_detection=st.booleans(),
    cuff_fit_detection=st.booleans(),
    irregular_pulse_detection=st.booleans(),
    pulse_rate_range_detection=st.booleans(),
    measurement_position_detection=st.booleans(),
    multiple_bonds=st.booleans(),
    e2e_crc=st.booleans(),
    user_data_service=st.booleans(),
    user_facing_time=st.booleans(),
    rfu=st.integers(0, 0x7F).map(lambda bits: bits << 9),
    trailing=st.binary(max_size=6),
)


def _temperature_fields() -> dict[str, st.SearchStrategy[object]]:
    return {
        "unit": st.sampled_from(TemperatureUnit),
        "temperature": floats,
        "timestamp": st.none() | date_times(),
        "temperature_type": st.none() | u8,
        "rfu_flags": st.integers(0, 31).map(lambda bits: bits << 3),
        "trailing": st.binary(max_size=6),
    }


temperature_measurements = st.builds(TemperatureMeasurement, **_temperature_fields())
intermediate_temperatures = st.builds(IntermediateTemperature, **_temperature_fields())


@st.composite
def temperature_payloads(draw: st.DrawFn) -> bytes:
    """Valid 0x2A1C/0x2A1E bytes for any flags byte."""
    flags = draw(u8)
    out = bytes([flags]) + draw(st.binary(min_size=4, max_size=4))
    if flags & 0x02:
        out += draw(date_times()).encode()
    if flags & 0x04:
        out += draw(st.binary(min_size=1, max_size=1))
    return out + draw(st.binary(max_size=6))
