"""Property test: any well-formed weight-scale reading maps to R4B-valid, self-consistent FHIR."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.models import (
    Absent,
    DeviceIdentity,
    GatewayInfo,
    PatientRef,
    Quantity,
    Reading,
    TimeSource,
)
from mappers import codes
from mappers.phd import map_reading, observation_identifier, transaction_bundle
from tests.mappers.factories import collect_references, validate_entries

# Units a driver may hand over for each quantity (device side, before conversion).
DEVICE_UNITS = {
    "body-weight": ["kg", "g", "[lb_av]"],
    "body-height": ["m", "cm", "[in_i]"],
    "bmi": ["kg/m2"],
}
# What must come out for each device unit, and the exact factor.
EXPECTED_UNIT = {
    "kg": ("kg", 1),
    "g": ("g", 1),
    "[lb_av]": ("[lb_av]", 1),
    "m": ("cm", 100),
    "cm": ("cm", 1),
    "[in_i]": ("[in_i]", 1),
    "kg/m2": ("kg/m2", 1),
}

hex_digits = st.text(alphabet="0123456789ABCDEFabcdef", min_size=1, max_size=1)


def hex_string(digits: int) -> st.SearchStrategy[str]:
    return st.lists(hex_digits, min_size=digits, max_size=digits).map("".join)


mac = st.lists(hex_string(2), min_size=6, max_size=6).map(":".join)
device_text = st.none() | st.text(max_size=24)

# IEEE-11073 numbers: SFLOAT (12-bit mantissa, exponent -8..7) and FLOAT (24-bit, small exponents
# in practice), rendered the way the codec does: mantissa scaled by 10**exponent, exponent kept.
sfloat = st.builds(
    lambda m, e: Decimal(m).scaleb(e),
    st.integers(-2046, 2045),
    st.integers(-8, 7),
)
float32 = st.builds(
    lambda m, e: Decimal(m).scaleb(e),
    st.integers(-(2**23) + 3, 2**23 - 3),
    st.integers(-12, 6),
)
measured = sfloat | float32

offsets = st.integers(-12 * 4, 14 * 4).map(lambda q: timezone(timedelta(minutes=15 * q)))
naive_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31))


@st.composite
def quantities(draw: st.DrawFn) -> tuple[Quantity, ...]:
    names = draw(st.lists(st.sampled_from(sorted(DEVICE_UNITS)), min_size=1, unique=True))
    out = []
    for name in names:
        unit = draw(st.sampled_from(DEVICE_UNITS[name]))
        why = draw(st.none() | st.sampled_from(list(Absent)))
        value = None if why is not None else draw(measured)
        out.append(Quantity(name=name, value=value, unit=unit, absent=why))
    return tuple(out)


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    device = DeviceIdentity(
        address=draw(mac),
        system_id=draw(st.none() | hex_string(16)),
        manufacturer=draw(device_text),
        model=draw(device_text),
        serial=draw(device_text),
        firmware=draw(device_text),
        hardware=draw(device_text),
        software=draw(device_text),
    )
    received = draw(naive_times).replace(tzinfo=UTC)
    device_time = draw(st.none() | naive_times.map(lambda t: t.replace(microsecond=0)))
    if device_time is None:
        effective, source = received, TimeSource.GATEWAY_RECEIPT
    else:
        effective, source = device_time.replace(tzinfo=draw(offsets)), TimeSource.DEVICE_LOCAL
    return Reading(
        kind="weight",
        characteristic="2A9D",
        device=device,
        quantities=draw(quantities()),
        device_time=device_time,
        effective_time=effective,
        time_source=source,
        received_at=received,
        user_index=draw(st.none() | st.integers(0, 255)),
        raw="00",
    )


patients = st.builds(
    PatientRef,
    system=st.sampled_from(
        ["urn:oid:1.2.250.1.213.1.4.8", "https://example.org/mrn", "urn:uuid:0f1e2d3c"]
    ),
    value=st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Zs", "Zl", "Zp"]),
        min_size=1,
        max_size=20,
    ),
)
gateways = st.builds(
    GatewayInfo,
    system_id=st.just("ECDE3D4E58532D31"),  # fixed, so it never equals a drawn device id
    software_version=st.text(min_size=1, max_size=12),
    time_sync=st.sampled_from(sorted(codes.TIME_SYNC_METHODS)),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reading=readings(), patient=patients, gateway=gateways)
def test_every_reading_maps_to_valid_consistent_fhir(
    reading: Reading, patient: PatientRef, gateway: GatewayInfo
) -> None:
    entries = map_reading(reading, patient, gateway)
    validate_entries(entries)
    bundle = transaction_bundle(entries)
    assert bundle["entry"] == entries

    # shape: PhgDevice, PhdDevice, then one Observation per quantity, all conditional creates
    assert len(entries) == 2 + len(reading.quantities)
    urls = [e["fullUrl"] for e in entries]
    assert len(set(urls)) == len(urls)
    for entry in entries:
        assert entry["request"]["method"] == "POST"
        assert entry["request"]["ifNoneExist"].startswith("identifier=")
        for ref in collect_references(entry["resource"]):
            assert ref in urls

    # deterministic and JSON-serialisable
    assert map_reading(reading, patient, gateway) == entries
    json.dumps(entries, default=str)

    for quantity, entry in zip(reading.quantities, entries[2:], strict=True):
        obs = entry["resource"]
        term = codes.QUANTITIES[quantity.name]
        assert term.loinc is not None
        assert obs["code"]["coding"][0]["code"] == str(term.mdc.code)
        assert obs["code"]["coding"][1]["code"] == term.loinc.code
        assert obs["identifier"][0]["value"] == observation_identifier(
            reading, patient, term.mdc.code
        )
        assert obs["device"]["reference"] == urls[1]
        assert obs["extension"][0]["valueReference"]["reference"] == urls[0]
        if quantity.absent is not None:
            assert "valueQuantity" not in obs
            assert (
                obs["dataAbsentReason"]["coding"][0]["code"]
                == (codes.DATA_ABSENT_REASONS[quantity.absent][0])
            )
        else:
            assert "dataAbsentReason" not in obs
            assert quantity.value is not None
            unit, factor = EXPECTED_UNIT[quantity.unit]
            value = obs["valueQuantity"]["value"]
            assert isinstance(value, Decimal)
            assert value == quantity.value * factor  # exact, no float anywhere
            assert obs["valueQuantity"]["code"] == unit
            assert unit in term.units
            out_exponent: Any = value.as_tuple().exponent
            in_exponent: Any = quantity.value.as_tuple().exponent
            assert out_exponent <= 0
            if factor == 1 and in_exponent <= 0:
                assert str(value) == str(quantity.value)  # precision kept digit for digit
