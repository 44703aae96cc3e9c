"""The template fast path writes exactly the bytes (or raises exactly the errors) of the slow path.

Readings of every kind are drawn from a few shapes each, with values and times drawn widely, and
all go through ONE cache: a template built from one reading is reused for many others, which is
the case that could go wrong.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.models import Absent, ClockCheck, Quantity, Reading, TimeSource
from gateway.serialize import dumps
from mappers import codes
from mappers.errors import MappingError
from mappers.phd import (
    map_reading,
    observation_identifier,
    primary_observation_code,
    transaction_bundle,
)
from mappers.phd_template import BundleTemplates
from tests.mappers.factories import (
    BARE_SCALE,
    GATEWAY,
    OTHER_PATIENT,
    PATIENT,
    SCALE,
    kg,
    reading,
    si_reading,
)

CACHE = BundleTemplates(dumps, maxsize=4096)  # shared by every example on purpose


def slow(r: Reading, patient=PATIENT) -> tuple[bytes, str] | str:
    """What the daemon computes today: the bundle bytes, then the idempotency key."""
    try:
        body = dumps(transaction_bundle(map_reading(r, patient, GATEWAY)))
        return body, observation_identifier(r, patient, primary_observation_code(r))
    except MappingError as exc:
        return f"MappingError: {exc}"


def slow_bundle(r: Reading, patient=PATIENT) -> bytes | str:
    try:
        return dumps(transaction_bundle(map_reading(r, patient, GATEWAY)))
    except MappingError as exc:
        return f"MappingError: {exc}"


def fast(cache: BundleTemplates, r: Reading, patient=PATIENT) -> tuple[bytes, str] | str:
    try:
        return cache.bundle_and_key(r, patient, GATEWAY)
    except MappingError as exc:
        return f"MappingError: {exc}"


def fast_bundle(cache: BundleTemplates, r: Reading, patient=PATIENT) -> bytes | str:
    try:
        return cache.bundle(r, patient, GATEWAY)
    except MappingError as exc:
        return f"MappingError: {exc}"


# --- strategies -----------------------------------------------------------------------------------

KINDS = sorted(codes.KINDS)
ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-3, minutes=-30))]
ZONES.append(ZoneInfo("Europe/Paris"))


def device_units(units: frozenset[str]) -> list[str]:
    """Units a driver may send for a quantity: the profile's and those converted to one."""
    sources = {u for u, (target, _) in codes.UNIT_CONVERSIONS.items() if target in units}
    return sorted(units | sources)


def quantity_units(kind: codes.KindTerm, name: str) -> list[str]:
    if kind.compound is not None and name in {c.name for c in kind.compound.components}:
        return device_units(kind.compound.units)
    if name in kind.numeric:
        return device_units(kind.numeric[name].units)
    return ["kg", "%"]  # unmapped quantity: never converted, the unit is not checked


# IEEE-11073 numbers as the codecs render them: mantissa scaled, exponent kept (also positive).
numbers = st.builds(
    lambda m, e: Decimal(m).scaleb(e), st.integers(-(2**23), 2**23), st.integers(-8, 6)
)
naive_times = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 12, 31))
aware_utc = naive_times.map(lambda t: t.replace(tzinfo=UTC))


@st.composite
def shapes(draw: st.DrawFn) -> Reading:
    """A reading whose shape (everything but values and times) comes from a small pool."""
    kind = codes.KINDS[draw(st.sampled_from(KINDS))]
    names = list(kind.numeric) + list(kind.unmapped)
    required: list[str] = []
    if kind.compound is not None:
        parts = [c.name for c in kind.compound.components]
        required = [c.name for c in kind.compound.components if c.required]
        names += [n for n in parts if n not in required]
    chosen = draw(st.lists(st.sampled_from(names), unique=True, min_size=1, max_size=3))
    if draw(st.integers(0, 9)) > 0:  # mostly complete compounds; sometimes not (MappingError)
        chosen = required + [name for name in chosen if name not in required]
    chosen = draw(st.permutations(chosen))
    quantities = []
    for name in chosen:
        unit = draw(st.sampled_from(quantity_units(kind, name)))
        why = draw(st.none() | st.none() | st.none() | st.sampled_from(list(Absent)))
        value = None if why is not None else Decimal("1")
        quantities.append(Quantity(name=name, value=value, unit=unit, absent=why))
    context: tuple[tuple[str, str], ...] = ()
    choices = [(key, v) for key, term in kind.contexts.items() for v in term.values]
    choices += [("specimen", name) for name in kind.specimens]
    if choices and draw(st.booleans()):
        context = tuple(dict(draw(st.lists(st.sampled_from(choices), max_size=3))).items())
    status_names = list(codes.CONDITIONS)[:4]
    if kind.status is not None:
        status_names += list(kind.status.bits)[:4]
        if kind.status.time_fault:
            status_names.append(kind.status.time_fault)
    status: tuple[str, ...] = ()
    if draw(st.integers(0, 3)) == 0:
        status = tuple(draw(st.lists(st.sampled_from(status_names), unique=True, max_size=2)))
    clock = None
    if draw(st.integers(0, 4)) == 0:
        clock = ClockCheck(
            device_time=draw(st.none() | st.just(datetime(2026, 8, 22, 8, 44, 58, 750_000))),
            gateway_time=datetime(2026, 8, 22, 6, 45, 10, 125_000, tzinfo=UTC),
        )
    sites = list(kind.sites)
    return Reading(
        kind=kind.kind,
        characteristic=draw(st.sampled_from(["2A9D", "2A35", "2A1C"])),
        device=draw(st.sampled_from([SCALE, BARE_SCALE])),
        quantities=tuple(quantities),
        device_time=draw(st.sampled_from([None, datetime(2026, 1, 1)])),
        effective_time=datetime(2026, 1, 1, tzinfo=draw(st.sampled_from(ZONES))),
        time_source=draw(st.sampled_from(list(TimeSource))),
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        user_index=draw(st.sampled_from([None, 1, 255])),
        raw="",
        site=draw(st.sampled_from([None, *sites[:3]])) if sites else None,
        context=context,
        status=status,
        clock=clock,
        battery=draw(st.sampled_from([None, None, None, 80])),
    )


@st.composite
def variants(draw: st.DrawFn, shape: Reading) -> Reading:
    """``shape`` with new values, times and provenance (what changes between two readings)."""
    quantities = tuple(
        q if q.value is None else replace(q, value=draw(numbers)) for q in shape.quantities
    )
    zone = shape.effective_time.tzinfo
    device_time = None if shape.device_time is None else draw(naive_times)
    return replace(
        shape,
        quantities=quantities,
        device_time=device_time,
        effective_time=draw(naive_times).replace(tzinfo=zone),
        received_at=draw(aware_utc) + timedelta(microseconds=draw(st.integers(0, 999_999))),
        raw=draw(st.text(alphabet="0123456789abcdef", max_size=12)),
        sequence=draw(st.none() | st.integers(0, 65535)),
    )


# --- properties -----------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), shape=shapes(), patient=st.sampled_from([PATIENT, OTHER_PATIENT]))
def test_fast_path_is_byte_identical_across_readings_of_a_shape(
    data: st.DataObject, shape: Reading, patient
) -> None:
    for r in data.draw(st.lists(variants(shape), min_size=2, max_size=6)):
        assert fast(CACHE, r, patient) == slow(r, patient)
        assert fast_bundle(CACHE, r, patient) == slow_bundle(r, patient)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_served_from_its_template(kind: str) -> None:
    """The property above is not vacuous: an ordinary reading of each kind takes the fast path."""
    term = codes.KINDS[kind]
    if term.compound is not None:
        names = [c.name for c in term.compound.components]
    else:
        names = [next(iter(term.numeric))]
    base = reading(
        *(Quantity(name=n, value=Decimal("1"), unit=quantity_units(term, n)[0]) for n in names),
        kind=kind,
    )
    cache = BundleTemplates(dumps)
    for i in range(20):
        r = replace(
            base,
            quantities=tuple(replace(q, value=Decimal(f"{40 + i}.{i}")) for q in base.quantities),
            device_time=datetime(2026, 8, 22, 8, 42, 36) + timedelta(minutes=i),
            effective_time=datetime(2026, 8, 22, 8, 42, 36, tzinfo=UTC) + timedelta(minutes=i),
        )
        assert fast(cache, r) == slow(r)
    assert (cache.fast, cache.slow, len(cache)) == (20, 0, 1)


def test_no_device_time_uses_the_receipt_time_in_every_slot() -> None:
    cache = BundleTemplates(dumps)
    for i in range(10):
        received = datetime(2026, 8, 22, 6, 43, 1, 250_000 + i * 71_113 % 750_000, tzinfo=UTC)
        r = replace(si_reading(), device_time=None, received_at=received + timedelta(hours=i))
        r = replace(r, time_source=TimeSource.GATEWAY_RECEIPT, effective_time=r.received_at)
        assert fast(cache, r) == slow(r)
    assert cache.fast == 10


def test_battery_readings_take_the_slow_path() -> None:
    """The battery entry carries the receipt time in a form no slot knows: never templated."""
    cache = BundleTemplates(dumps)
    for i in range(5):
        r = replace(si_reading(), battery=80, received_at=datetime(2026, 1, 1, i, tzinfo=UTC))
        assert fast(cache, r) == slow(r)
    assert (cache.fast, cache.slow) == (0, 5)


@pytest.mark.parametrize(
    "broken",
    [
        lambda r: replace(r, quantities=()),
        lambda r: replace(r, kind="toaster"),
        lambda r: replace(r, effective_time=r.effective_time.replace(tzinfo=None)),
        lambda r: replace(
            r, effective_time=r.effective_time.replace(tzinfo=timezone(timedelta(seconds=30)))
        ),
        lambda r: replace(r, quantities=(replace(kg("1"), value=Decimal("NaN")),)),
        lambda r: replace(r, quantities=(replace(kg("1"), value=None),)),
        lambda r: replace(r, quantities=(replace(kg("1"), unit="mm[Hg]"),)),
        lambda r: replace(r, quantities=(kg("1"), kg("2"))),
        lambda r: replace(r, site="ear"),
        lambda r: replace(r, status=("no-such-bit",)),
        lambda r: replace(r, device=replace(r.device, system_id="XYZ")),
        lambda r: replace(r, device=replace(r.device, system_id=GATEWAY.system_id)),
    ],
)
def test_mapping_errors_are_raised_as_by_map_reading(broken) -> None:
    cache = BundleTemplates(dumps)
    good = si_reading()
    assert fast(cache, good) == slow(good)  # a template exists for the good shape
    bad = broken(good)
    expected = slow(bad)
    assert isinstance(expected, str)
    assert fast(cache, bad) == expected
    assert fast_bundle(cache, bad) == slow_bundle(bad)
    with pytest.raises(MappingError):
        cache.bundle(bad, PATIENT, GATEWAY)


def test_a_value_that_turns_bad_after_the_template_still_raises() -> None:
    """Same shape as a cached template, but a value map_reading refuses (NaN, an int)."""
    cache = BundleTemplates(dumps)
    good = reading(kg("70.1"))
    cache.bundle(good, PATIENT, GATEWAY)
    for value in (Decimal("NaN"), Decimal("Infinity"), 70):
        bad = replace(good, quantities=(Quantity(name="body-weight", value=value, unit="kg"),))
        assert fast(cache, bad) == slow(bad)
        assert isinstance(slow(bad), str)


def test_the_cache_is_bounded() -> None:
    cache = BundleTemplates(dumps, maxsize=3)
    for index in range(10):
        r = replace(si_reading(), user_index=index)
        assert fast(cache, r) == slow(r)
    assert len(cache) == 3
