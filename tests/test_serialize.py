"""A reading as the outbox keeps it (``reading_to_json``) reads back equal (``reading_from_json``):
late binding maps readings from that copy, so nothing may be lost or rounded on the way."""

from __future__ import annotations

import dataclasses
from datetime import UTC

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.models import ClockCheck, Reading
from gateway.serialize import reading_from_json, reading_to_json
from tests.mappers.test_phd_properties import naive_times, readings

names = st.text(alphabet="abcdefghij-", min_size=1, max_size=12)


@st.composite
def full_readings(draw: st.DrawFn) -> Reading:
    base = draw(readings())
    clock = draw(
        st.none()
        | st.builds(
            ClockCheck,
            device_time=st.none() | naive_times,
            gateway_time=naive_times.map(lambda t: t.replace(tzinfo=UTC)),
            set_to=st.none() | naive_times,
        )
    )
    return dataclasses.replace(
        base,
        flags=draw(st.integers(0, 2**16)),
        sequence=draw(st.none() | st.integers(0, 2**16)),
        site=draw(st.none() | names),
        corrections=tuple(draw(st.lists(names, max_size=3))),
        context=tuple(draw(st.lists(st.tuples(names, names), max_size=3))),
        status=tuple(draw(st.lists(names, max_size=3))),
        clock=clock,
        battery=draw(st.none() | st.integers(0, 100)),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reading=full_readings())
def test_a_stored_reading_reads_back_equal_with_exact_numbers(reading: Reading) -> None:
    back = reading_from_json(reading_to_json(reading))
    assert back == reading
    assert back.key == reading.key
    for mine, theirs in zip(back.quantities, reading.quantities, strict=True):
        assert str(mine.value) == str(theirs.value)  # 65.700 stays 65.700, 1E+1 stays 1E+1


def test_anything_else_is_refused() -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        reading_from_json(b'{"kind": "weight"}')
    with pytest.raises(ValueError):
        reading_from_json(b"not json")
