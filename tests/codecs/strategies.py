"""Hypothesis strategies for valid codec values (shared by the round-trip tests)."""

from __future__ import annotations

import calendar

from hypothesis import strategies as st

from drivers.codecs import DateTime, Units, WeightMeasurement, WeightScaleFeature

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)


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
