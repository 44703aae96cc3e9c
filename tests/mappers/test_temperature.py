"""Thermometer readings: one numeric body-temperature Observation, optional body site."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.models import Absent, DeviceIdentity, PatientRef, Quantity, Reading, TimeSource
from mappers import codes
from mappers.errors import MappingError
from mappers.phd import (
    map_reading,
    observation_identifier,
    primary_observation_code,
    transaction_bundle,
)
from tests.mappers.factories import (
    GATEWAY,
    PATIENT,
    collect_references,
    reading,
    validate_entries,
)
from tests.mappers.test_phd_properties import (
    gateways,
    hex_string,
    mac,
    measured,
    naive_times,
    offsets,
    patients,
)

MDC = "urn:iso:std:iso:11073:10101"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
DAR = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
OBS_ID = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
BODYTEMP_PROFILE = "http://hl7.org/fhir/StructureDefinition/bodytemp"
NUMERIC_PROFILE = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdNumericObservation"
DEVICE_TS = "840703356"

# Hand-written (spec §3 and the Bluetooth Temperature Type list): never derived from mappers.codes.
TEMP_CODING = [
    {"system": MDC, "code": "150364", "display": "MDC_TEMP_BODY"},
    {"system": LOINC, "code": "8310-5", "display": "Body temperature"},
]
TEMP_SPECIALIZATION = {"system": MDC, "code": "528392", "display": "MDC_DEV_SPEC_PROFILE_TEMP"}
SITES = {
    "armpit": ("91470000", "Axillary region structure"),
    "body": None,
    "ear": ("117590005", "Ear structure"),
    "finger": ("7569003", "Finger structure"),
    "gastro-intestinal-tract": ("122865005", "Gastrointestinal tract structure"),
    "mouth": ("74262004", "Oral cavity structure"),
    "rectum": ("34402009", "Rectum structure"),
    "toe": ("29707007", "Toe structure"),
    "tympanum": ("42859004", "Tympanic membrane structure"),
}
# Vital-sign codes of other rows that must never appear on a temperature.
FOREIGN = {"8867-4", "8462-4", "8480-6", "85354-9", "29463-7", "2708-6", "149546", "188736"}

THERMOMETER = DeviceIdentity(
    address="E0:7D:EA:11:22:33", manufacturer="ACME Health", model="T-1", firmware="3.2"
)


def celsius(value: str, unit: str = "Cel") -> Quantity:
    return Quantity(name="body-temperature", value=Decimal(value), unit=unit)


def temp_reading(*quantities: Quantity, **kwargs: Any) -> Reading:
    return reading(
        *(quantities or (celsius("36.85"),)), kind="body-temperature", device=THERMOMETER, **kwargs
    )


def the_observation(entries: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(entries) == 3
    obs: dict[str, Any] = entries[2]["resource"]
    return obs


# --- the code table -------------------------------------------------------------------------------


def test_temperature_table_matches_literal_terminology() -> None:
    (term,) = codes.TEMPERATURE_QUANTITIES.values()
    assert term.name == "body-temperature"
    assert term.loinc is not None
    assert [
        {"system": MDC, "code": str(term.mdc.code), "display": term.mdc.ref_id},
        {"system": LOINC, "code": term.loinc.code, "display": term.loinc.display},
    ] == TEMP_CODING
    assert term.mdc.code == 2 * 65536 + 19292
    assert (term.profile, term.units) == (BODYTEMP_PROFILE, frozenset({"Cel", "[degF]"}))
    kind = codes.kind_term("body-temperature")
    assert kind.compound is None
    assert kind.specialization.code == 8 * 65536 + 4104
    assert kind.specialization.ref_id == "MDC_DEV_SPEC_PROFILE_TEMP"
    assert {
        name: None if site is None else (site.code, site.display)
        for name, site in kind.sites.items()
    } == SITES
    assert not {term.loinc.code, str(term.mdc.code)} & FOREIGN


def test_tables_are_read_only() -> None:
    with pytest.raises(TypeError):
        codes.TEMPERATURE_SITES["forehead"] = None  # type: ignore[index]
    with pytest.raises(TypeError):
        codes.KINDS["spo2"] = codes.KINDS["weight"]  # type: ignore[index]


# --- mapping --------------------------------------------------------------------------------------


def test_celsius_reading_maps_and_validates() -> None:
    entries = map_reading(temp_reading(), PATIENT, GATEWAY)
    validate_entries(entries)
    validate_entries(transaction_bundle(entries)["entry"])
    device = entries[1]["resource"]
    assert device["specialization"][0]["systemType"]["coding"] == [TEMP_SPECIALIZATION]
    obs = the_observation(entries)
    assert obs["meta"]["profile"] == [BODYTEMP_PROFILE, NUMERIC_PROFILE]
    assert obs["code"]["coding"] == TEMP_CODING
    assert obs["valueQuantity"] == {
        "value": Decimal("36.85"),
        "unit": "°C",
        "system": UCUM,
        "code": "Cel",
    }
    assert str(obs["valueQuantity"]["value"]) == "36.85"
    assert "bodySite" not in obs
    assert obs["identifier"] == [
        {
            "system": OBS_ID,
            "value": f"E07DEA112233-2800175123456-urn:oid:1.2.250.1.213.1.4.8-150364-{DEVICE_TS}",
        }
    ]
    assert obs["category"][0]["coding"][0]["code"] == "vital-signs"
    assert primary_observation_code(temp_reading()) == 150364


@pytest.mark.parametrize(
    ("value", "unit", "text", "display"),
    [
        ("98.6", "[degF]", "98.6", "°F"),
        ("98.60", "[degF]", "98.60", "°F"),
        ("37.0", "Cel", "37.0", "°C"),
        ("37", "Cel", "37", "°C"),
        ("3.7E+1", "Cel", "37", "°C"),
        ("36.125", "Cel", "36.125", "°C"),
    ],
)
def test_units_pass_through_exactly(value: str, unit: str, text: str, display: str) -> None:
    entries = map_reading(temp_reading(celsius(value, unit)), PATIENT, GATEWAY)
    validate_entries(entries)
    quantity = the_observation(entries)["valueQuantity"]
    assert isinstance(quantity["value"], Decimal)
    assert (str(quantity["value"]), quantity["code"], quantity["unit"]) == (text, unit, display)
    assert quantity["value"] == Decimal(value)


@pytest.mark.parametrize(
    ("why", "code"),
    [
        (Absent.NAN, "not-a-number"),
        (Absent.POSITIVE_INFINITY, "positive-infinity"),
        (Absent.NEGATIVE_INFINITY, "negative-infinity"),
        (Absent.NRES, "error"),
        (Absent.RESERVED, "error"),
        (Absent.UNSUCCESSFUL, "error"),
    ],
)
def test_special_values_give_data_absent_reason(why: Absent, code: str) -> None:
    q = Quantity(name="body-temperature", value=None, unit="[degF]", absent=why)
    entries = map_reading(replace(temp_reading(q), site="mouth"), PATIENT, GATEWAY)
    validate_entries(entries)
    obs = the_observation(entries)
    assert "valueQuantity" not in obs
    assert obs["dataAbsentReason"]["coding"] == [
        {"system": DAR, "code": code, "display": codes.DATA_ABSENT_REASONS[why][1]}
    ]
    assert obs["bodySite"]["coding"][0]["code"] == "74262004"


@pytest.mark.parametrize("site", sorted(SITES))
def test_body_site(site: str) -> None:
    entries = map_reading(replace(temp_reading(), site=site), PATIENT, GATEWAY)
    validate_entries(entries)
    obs = the_observation(entries)
    expected = SITES[site]
    if expected is None:
        assert "bodySite" not in obs
    else:
        assert obs["bodySite"] == {
            "coding": [{"system": SNOMED, "code": expected[0], "display": expected[1]}]
        }
    # the site never changes the code or the identifier (so never the de-duplication key)
    plain = the_observation(map_reading(temp_reading(), PATIENT, GATEWAY))
    assert obs["identifier"] == plain["identifier"]
    assert obs["code"] == plain["code"]
    assert {k: v for k, v in obs.items() if k != "bodySite"} == plain


def test_body_site_sits_before_device_in_element_order() -> None:
    obs = the_observation(map_reading(replace(temp_reading(), site="rectum"), PATIENT, GATEWAY))
    keys = list(obs)
    assert keys.index("valueQuantity") < keys.index("bodySite") < keys.index("device")


@pytest.mark.parametrize(
    ("make", "site", "why"),
    [
        (lambda: temp_reading(celsius("310.0", "K")), None, "kelvin"),
        (lambda: temp_reading(celsius("36.8", "degF")), None, "not UCUM"),
        (lambda: temp_reading(celsius("36.8", "Cel"), celsius("36.9")), None, "duplicate"),
        (
            lambda: temp_reading(
                Quantity(name="body-temperature", value=None, unit="K", absent=Absent.NAN)
            ),
            None,
            "bad unit, absent",
        ),
        (
            lambda: temp_reading(Quantity(name="body-weight", value=Decimal(1), unit="kg")),
            None,
            "weight in a thermometer",
        ),
        (
            lambda: temp_reading(Quantity(name="pulse-rate", value=Decimal(60), unit="/min")),
            None,
            "pulse in a thermometer",
        ),
        (lambda: temp_reading(celsius("NaN")), None, "NaN decimal"),
        (lambda: temp_reading(), "forehead", "unknown site"),
        (lambda: temp_reading(), "Mouth", "site names are exact"),
        (lambda: temp_reading(), "6", "HTS number, not a name"),
        (lambda: reading(), "armpit", "site on a weight"),
        (lambda: reading(celsius("36.8"), kind="body-temperature"), "", "empty site"),
    ],
)
def test_unmappable_temperature_readings(make: Any, site: str | None, why: str) -> None:
    with pytest.raises(MappingError) as caught:
        map_reading(replace(make(), site=site), PATIENT, GATEWAY)
    assert PATIENT.value not in str(caught.value), why
    assert "36.8" not in str(caught.value), why


def test_weight_output_is_the_same_with_site_none() -> None:
    assert map_reading(replace(reading(), site=None), PATIENT, GATEWAY) == map_reading(
        reading(), PATIENT, GATEWAY
    )


def test_retries_are_byte_identical() -> None:
    def once() -> str:
        entries = map_reading(replace(temp_reading(), site="tympanum"), PATIENT, GATEWAY)
        return json.dumps(transaction_bundle(entries), default=str, ensure_ascii=False)

    assert once() == once()


def test_output_is_fresh_per_call() -> None:
    first = map_reading(replace(temp_reading(), site="armpit"), PATIENT, GATEWAY)
    pristine = copy.deepcopy(first)
    first[2]["resource"]["bodySite"]["coding"][0]["code"] = "tampered"
    assert map_reading(replace(temp_reading(), site="armpit"), PATIENT, GATEWAY) == pristine
    armpit = codes.BodySite("91470000", "Axillary region structure")
    assert codes.TEMPERATURE_SITES["armpit"] == armpit


# --- property -------------------------------------------------------------------------------------


@st.composite
def temp_readings(draw: st.DrawFn) -> Reading:
    device = DeviceIdentity(address=draw(mac), system_id=draw(st.none() | hex_string(16)))
    received = draw(naive_times).replace(tzinfo=UTC)
    device_time = draw(st.none() | naive_times.map(lambda t: t.replace(microsecond=0)))
    if device_time is None:
        effective, source = received, TimeSource.GATEWAY_RECEIPT
    else:
        effective, source = device_time.replace(tzinfo=draw(offsets)), TimeSource.DEVICE_LOCAL
    why = draw(st.none() | st.sampled_from(list(Absent)))
    quantity = Quantity(
        name="body-temperature",
        value=None if why is not None else draw(measured),
        unit=draw(st.sampled_from(["Cel", "[degF]"])),
        absent=why,
    )
    return Reading(
        kind="body-temperature",
        characteristic="2A1C",
        device=device,
        quantities=(quantity,),
        device_time=device_time,
        effective_time=effective,
        time_source=source,
        received_at=received,
        user_index=None,
        raw="00",
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    r=temp_readings(),
    patient=patients,
    gateway=gateways,
    site=st.none() | st.sampled_from(sorted(SITES)),
)
def test_every_temperature_reading_maps_to_valid_consistent_fhir(
    r: Reading, patient: PatientRef, gateway: Any, site: str | None
) -> None:
    r = replace(r, site=site)
    entries = map_reading(r, patient, gateway)
    validate_entries(entries)
    assert map_reading(r, patient, gateway) == entries
    json.dumps(entries, default=str)
    urls = [e["fullUrl"] for e in entries]
    assert len(set(urls)) == len(urls) == 3
    for entry in entries:
        for ref in collect_references(entry["resource"]):
            assert ref in urls
    obs = entries[2]["resource"]
    assert obs["code"]["coding"] == TEMP_CODING
    assert obs["identifier"][0]["value"] == observation_identifier(r, patient, 150364)
    expected_site = SITES[site] if site is not None else None
    if expected_site is None:
        assert "bodySite" not in obs
    else:
        assert obs["bodySite"]["coding"][0]["code"] == expected_site[0]
    (quantity,) = r.quantities
    if quantity.absent is not None:
        assert "valueQuantity" not in obs
        assert (
            obs["dataAbsentReason"]["coding"][0]["code"]
            == (codes.DATA_ABSENT_REASONS[quantity.absent][0])
        )
    else:
        assert quantity.value is not None
        value = obs["valueQuantity"]["value"]
        assert isinstance(value, Decimal)
        assert value == quantity.value
        assert obs["valueQuantity"]["code"] == quantity.unit
        exponent: Any = quantity.value.as_tuple().exponent
        if exponent <= 0:
            assert str(value) == str(quantity.value)
