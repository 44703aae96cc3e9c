"""Pulse oximeter and body composition analyser readings."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from drivers.models import Absent, DeviceIdentity, Quantity, Reading
from mappers.errors import MappingError
from mappers.phd import map_reading, primary_observation_code
from tests.mappers.factories import (
    GATEWAY,
    PATIENT,
    observations,
    quantity,
    reading,
    validate_entries,
)

MDC = "urn:iso:std:iso:11073:10101"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
R4 = "http://hl7.org/fhir/StructureDefinition/"
NUMERIC = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdNumericObservation"
VITAL = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
        }
    ]
}
PHD = {
    "coding": [
        {"system": "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories", "code": "phd"}
    ]
}
DEVICE_TS = "840703356"

OXIMETER = DeviceIdentity(
    address="00:1C:05:FF:E8:75", system_id="74E8FFFEFF051C01", manufacturer="ACME", model="OX-2"
)
ANALYSER = DeviceIdentity(address="C0:ED:6E:00:00:09", manufacturer="ACME", model="BC-9")

SPO2_CODING = [
    {"system": MDC, "code": "150456", "display": "MDC_PULS_OXIM_SAT_O2"},
    {"system": LOINC, "code": "2708-6", "display": "Oxygen saturation in Arterial blood"},
    {
        "system": LOINC,
        "code": "59408-5",
        "display": "Oxygen saturation in Arterial blood by Pulse oximetry",
    },
]
OXIMETER_PULSE_CODING = [
    {"system": MDC, "code": "149530", "display": "MDC_PULS_OXIM_PULS_RATE"},
    {"system": LOINC, "code": "8867-4", "display": "Heart rate"},
]


def spo2_reading(*quantities: Quantity) -> Reading:
    quantities = quantities or (quantity("spo2", "97", "%"), quantity("pulse-rate", "64", "/min"))
    return reading(*quantities, kind="spo2", device=OXIMETER)


def bca_reading(*quantities: Quantity) -> Reading:
    return reading(*quantities, kind="body-composition", device=ANALYSER)


# --- pulse oximeter -------------------------------------------------------------------------------


def test_spo2_and_pulse_are_two_vital_sign_observations() -> None:
    r = spo2_reading()
    entries = map_reading(r, PATIENT, GATEWAY)
    validate_entries(entries)
    assert entries[1]["resource"]["specialization"][0]["systemType"]["coding"] == [
        {"system": MDC, "code": "528388", "display": "MDC_DEV_SPEC_PROFILE_PULS_OXIM"}
    ]
    saturation, pulse = observations(entries)
    assert saturation["meta"] == {"profile": [R4 + "oxygensat", NUMERIC]}
    assert saturation["category"] == [VITAL, PHD]
    assert saturation["code"]["coding"] == SPO2_CODING
    assert saturation["valueQuantity"] == {
        "value": Decimal("97"),
        "unit": "%",
        "system": UCUM,
        "code": "%",
    }
    assert saturation["identifier"][0]["value"].endswith(f"-150456-{DEVICE_TS}")
    assert pulse["meta"] == {"profile": [R4 + "heartrate", NUMERIC]}
    assert pulse["category"] == [VITAL, PHD]
    assert pulse["code"]["coding"] == OXIMETER_PULSE_CODING
    assert pulse["identifier"][0]["value"].endswith(f"-149530-{DEVICE_TS}")
    assert primary_observation_code(r) == 150456


def test_oximeter_pulse_is_not_coded_as_a_bp_monitor_pulse() -> None:
    entries = map_reading(spo2_reading(quantity("pulse-rate", "64", "/min")), PATIENT, GATEWAY)
    (pulse,) = observations(entries)
    codes_written = {c["code"] for c in pulse["code"]["coding"]}
    assert "149530" in codes_written
    assert "149546" not in codes_written  # MDC_PULS_RATE_NON_INV belongs to the BP monitor
    bp_pulse = map_reading(
        reading(
            quantity("systolic", "120", "mm[Hg]"),
            quantity("diastolic", "80", "mm[Hg]"),
            quantity("pulse-rate", "64", "/min"),
            kind="blood-pressure",
        ),
        PATIENT,
        GATEWAY,
    )[3]["resource"]
    assert bp_pulse["code"]["coding"][0]["code"] == "149546"
    assert bp_pulse["code"]["coding"][1] == pulse["code"]["coding"][1]  # same LOINC 8867-4


@pytest.mark.parametrize("value", ["97", "97.5", "100", "9.75E+1"])
def test_spo2_values_are_exact(value: str) -> None:
    entries = map_reading(spo2_reading(quantity("spo2", value, "%")), PATIENT, GATEWAY)
    validate_entries(entries)
    got = observations(entries)[0]["valueQuantity"]["value"]
    assert got == Decimal(value)
    assert "E" not in str(got)


def test_absent_spo2() -> None:
    q = Quantity(name="spo2", value=None, unit="%", absent=Absent.NRES)
    entries = map_reading(spo2_reading(q), PATIENT, GATEWAY)
    validate_entries(entries)
    obs = observations(entries)[0]
    assert obs["dataAbsentReason"]["coding"][0]["code"] == "error"
    assert obs["code"]["coding"] == SPO2_CODING


@pytest.mark.parametrize(
    ("quantities", "needle"),
    [
        ((quantity("spo2", "0.97", "1"),), "spo2"),
        ((quantity("pulse-rate", "64", "{beat}/min"),), "pulse-rate"),
        ((quantity("glucose", "98", "mg/dL"),), "glucose"),
    ],
)
def test_unmappable_spo2_readings(quantities: tuple[Quantity, ...], needle: str) -> None:
    with pytest.raises(MappingError, match=needle):
        map_reading(spo2_reading(*quantities), PATIENT, GATEWAY)


# --- body composition -----------------------------------------------------------------------------


def test_body_composition_reading() -> None:
    r = bca_reading(
        quantity("body-weight", "72.40", "kg"),
        quantity("body-fat", "23.5", "%"),
        quantity("fat-free-mass", "55.4", "kg"),
        quantity("soft-lean-mass", "52.1", "kg"),
        quantity("body-water-mass", "40.2", "kg"),
        quantity("body-height", "1.80", "m"),
        quantity("bmi", "22.3", "kg/m2"),
    )
    entries = map_reading(r, PATIENT, GATEWAY)
    validate_entries(entries)
    assert entries[1]["resource"]["specialization"][0]["systemType"]["coding"] == [
        {"system": MDC, "code": "528404", "display": "MDC_DEV_SPEC_PROFILE_BCA"}
    ]
    got = {
        obs["code"]["coding"][0]["code"]: obs
        for obs in observations(entries)  # one per quantity, in reading order
    }
    assert list(got) == ["188736", "188748", "188756", "188760", "188764", "188740", "188752"]
    # the scale quantities are mapped exactly as for the scale (vital signs, R4 profiles)
    weight = got["188736"]
    assert weight["meta"]["profile"] == [R4 + "bodyweight", NUMERIC]
    assert weight["category"] == [VITAL, PHD]
    assert str(got["188740"]["valueQuantity"]["value"]) == "180"
    assert got["188740"]["valueQuantity"]["code"] == "cm"
    # body fat: MDC + LOINC, PHD only
    fat = got["188748"]
    assert fat["meta"] == {"profile": [NUMERIC]}
    assert fat["category"] == [PHD]
    assert fat["code"]["coding"] == [
        {"system": MDC, "code": "188748", "display": "MDC_BODY_FAT"},
        {"system": LOINC, "code": "41982-0", "display": "Percentage of body fat Measured"},
    ]
    assert fat["valueQuantity"] == {
        "value": Decimal("23.5"),
        "unit": "%",
        "system": UCUM,
        "code": "%",
    }
    # the analyser's masses: MDC coding only
    for code, ref_id, value in [
        ("188756", "MDC_MASS_BODY_FAT_FREE", "55.4"),
        ("188760", "MDC_MASS_BODY_SOFT_LEAN", "52.1"),
        ("188764", "MDC_BODY_WATER", "40.2"),
    ]:
        obs = got[code]
        assert obs["code"]["coding"] == [{"system": MDC, "code": code, "display": ref_id}]
        assert obs["category"] == [PHD]
        assert str(obs["valueQuantity"]["value"]) == value
        assert obs["identifier"][0]["value"].endswith(f"-{code}-{DEVICE_TS}")


def test_masses_in_pounds() -> None:
    entries = map_reading(
        bca_reading(quantity("fat-free-mass", "122.1", "[lb_av]")), PATIENT, GATEWAY
    )
    validate_entries(entries)
    q = observations(entries)[0]["valueQuantity"]
    assert (str(q["value"]), q["code"], q["unit"]) == ("122.1", "[lb_av]", "lb")


@pytest.mark.parametrize(
    ("q", "needle"),
    [
        (quantity("body-fat", "0.235", "1"), "body-fat"),
        (quantity("fat-free-mass", "55400", "g"), "fat-free-mass"),
        (quantity("body-water-mass", "40", "L"), "body-water-mass"),
    ],
)
def test_unmappable_body_composition(q: Quantity, needle: str) -> None:
    with pytest.raises(MappingError, match=needle):
        map_reading(bca_reading(quantity("body-fat", "23.5", "%"), q), PATIENT, GATEWAY)


@pytest.mark.parametrize(
    "q",
    [
        quantity("muscle-mass", "30.1", "kg"),
        quantity("muscle-percentage", "41", "%"),
        quantity("impedance", "512", "Ohm"),
        quantity("basal-metabolism", "6300", "kJ"),
    ],
)
def test_body_composition_without_a_confirmed_code_is_left_out_not_fatal(q: Quantity) -> None:
    entries = map_reading(bca_reading(quantity("body-fat", "23.5", "%"), q), PATIENT, GATEWAY)
    validate_entries(entries)
    (obs,) = observations(entries)
    assert obs["code"]["coding"][0]["code"] == "188748"  # body fat only
    with pytest.raises(MappingError, match="no confirmed MDC code for " + q.name):
        map_reading(bca_reading(q), PATIENT, GATEWAY)  # nothing left to send


def test_pulse_amplitude_index_is_left_out_of_an_spo2_reading() -> None:
    entries = map_reading(
        spo2_reading(quantity("spo2", "97", "%"), quantity("pulse-amplitude-index", "4.2", "%")),
        PATIENT,
        GATEWAY,
    )
    validate_entries(entries)
    assert [o["code"]["coding"][0]["code"] for o in observations(entries)] == ["150456"]


def test_weight_kind_still_refuses_body_fat() -> None:
    with pytest.raises(MappingError):
        map_reading(reading(quantity("body-fat", "23.5", "%")), PATIENT, GATEWAY)


def _resources(entries: list[dict[str, Any]]) -> list[str]:
    return [e["resource"]["resourceType"] for e in entries]


def test_no_extras_no_extra_entries() -> None:
    for r in (spo2_reading(), bca_reading(quantity("body-fat", "23.5", "%"))):
        entries = map_reading(r, PATIENT, GATEWAY)
        assert _resources(entries) == ["Device", "Device"] + ["Observation"] * len(r.quantities)
