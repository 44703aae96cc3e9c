"""Glucose meter and CGM readings: specimen-dependent codes, coded context, refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from drivers.models import Absent, DeviceIdentity, Quantity, Reading
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
    by_profile,
    collect_references,
    observations,
    quantity,
    reading,
    validate_entries,
)

MDC = "urn:iso:std:iso:11073:10101"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
DAR = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
OBS_ID = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
NUMERIC = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdNumericObservation"
CODED = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCodedEnumerationObservation"
PHD_CATEGORY = [
    {
        "coding": [
            {
                "system": "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories",
                "code": "phd",
            }
        ]
    }
]
DEVICE_TS = "840703356"  # 2026-08-22 08:42:36 in seconds since 2000-01-01

METER = DeviceIdentity(
    address="F4:5E:AB:A8:08:32",
    system_id="00601900010E9234",
    manufacturer="ACME Health",
    model="GL-50",
    firmware="4.1",
)
CGM = DeviceIdentity(address="D0:1F:2A:3B:4C:5D", manufacturer="ACME Health", model="CG-1")
# device-patient-system part of the PHD identifiers of the meter's Observations
PREFIX = "00601900010E9234-2800175123456-urn:oid:1.2.250.1.213.1.4.8"

# Hand-written expectations (specimen -> MDC coding, LOINC mg/dL, LOINC mmol/L).
SPECIMEN_CODES = {
    None: ("160368", "MDC_CONC_GLU_UNDETERMINED_PLASMA", "2345-7", "14749-6"),
    "capillary-whole-blood": ("160184", "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD", "41653-7", "14743-9"),
    "capillary-plasma": ("160188", "MDC_CONC_GLU_CAPILLARY_PLASMA", "41653-7", "14743-9"),
    "venous-whole-blood": ("160192", "MDC_CONC_GLU_VENOUS_WHOLEBLOOD", "2339-0", "15074-8"),
    "venous-plasma": ("160196", "MDC_CONC_GLU_VENOUS_PLASMA", "2345-7", "14749-6"),
    "arterial-whole-blood": ("160200", "MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD", "2339-0", "15074-8"),
    "arterial-plasma": ("160204", "MDC_CONC_GLU_ARTERIAL_PLASMA", "2345-7", "14749-6"),
    "undetermined-whole-blood": (
        "160364",
        "MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD",
        "2339-0",
        "15074-8",
    ),
    "undetermined-plasma": ("160368", "MDC_CONC_GLU_UNDETERMINED_PLASMA", "2345-7", "14749-6"),
    "interstitial-fluid": ("160212", "MDC_CONC_GLU_ISF", "99504-3", "105272-9"),
}
# Context value -> (context code, value code, value ref id)
CONTEXT_CODES = {
    ("meal", "preprandial"): ("8417864", "8417868", "MDC_CTXT_GLU_MEAL_PREPRANDIAL"),
    ("meal", "postprandial"): ("8417864", "8417872", "MDC_CTXT_GLU_MEAL_POSTPRANDIAL"),
    ("meal", "fasting"): ("8417864", "8417876", "MDC_CTXT_GLU_MEAL_FASTING"),
    ("meal", "casual"): ("8417864", "8417880", "MDC_CTXT_GLU_MEAL_CASUAL"),
    ("tester", "self"): ("8417884", "8417888", "MDC_CTXT_GLU_TESTER_SELF"),
    ("tester", "health-care-professional"): ("8417884", "8417892", "MDC_CTXT_GLU_TESTER_HCP"),
    ("tester", "lab"): ("8417884", "8417896", "MDC_CTXT_GLU_TESTER_LAB"),
    ("health", "minor-issues"): ("8417820", "8417824", "MDC_CTXT_GLU_HEALTH_MINOR"),
    ("health", "major-issues"): ("8417820", "8417828", "MDC_CTXT_GLU_HEALTH_MAJOR"),
    ("health", "menses"): ("8417820", "8417832", "MDC_CTXT_GLU_HEALTH_MENSES"),
    ("health", "stress"): ("8417820", "8417836", "MDC_CTXT_GLU_HEALTH_STRESS"),
    ("health", "none"): ("8417820", "8417840", "MDC_CTXT_GLU_HEALTH_NONE"),
    ("sample-location", "finger"): ("8417844", "8417848", "MDC_CTXT_GLU_SAMPLELOCATION_FINGER"),
    ("sample-location", "alternate-site"): (
        "8417844",
        "8417852",
        "MDC_CTXT_GLU_SAMPLELOCATION_AST",
    ),
    ("sample-location", "earlobe"): (
        "8417844",
        "8417856",
        "MDC_CTXT_GLU_SAMPLELOCATION_EARLOBE",
    ),
}
# Vital-sign and other-kind codes a glucose Observation must never carry.
FOREIGN = {"vital-signs", "8867-4", "29463-7", "2708-6", "8310-5", "85354-9", "188736"}


def glucose(value: str = "98", unit: str = "mg/dL") -> Quantity:
    return quantity("glucose", value, unit)


def glucose_reading(
    *quantities: Quantity, context: tuple[tuple[str, str], ...] = (), **kwargs: Any
) -> Reading:
    r = reading(*(quantities or (glucose(),)), kind="blood-glucose", device=METER, **kwargs)
    return replace(r, context=context)


def cgm_reading(*quantities: Quantity, **kwargs: Any) -> Reading:
    return reading(*(quantities or (glucose("112"),)), kind="cgm", device=CGM, **kwargs)


def the_glucose(entries: list[dict[str, Any]]) -> dict[str, Any]:
    (entry,) = by_profile(entries, "PhdNumericObservation")
    resource: dict[str, Any] = entry["resource"]
    return resource


# --- glucose meter --------------------------------------------------------------------------------


def test_glucose_reading_shape() -> None:
    entries = map_reading(glucose_reading(glucose("98")), PATIENT, GATEWAY)
    validate_entries(entries)
    validate_entries(transaction_bundle(entries)["entry"])
    assert len(entries) == 3
    device = entries[1]["resource"]
    assert device["specialization"][0]["systemType"]["coding"] == [
        {"system": MDC, "code": "528401", "display": "MDC_DEV_SPEC_PROFILE_GLUCOSE"}
    ]
    obs = entries[2]["resource"]
    assert obs["meta"] == {"profile": [NUMERIC]}
    assert obs["category"] == PHD_CATEGORY
    assert obs["code"]["coding"] == [
        {"system": MDC, "code": "160368", "display": "MDC_CONC_GLU_UNDETERMINED_PLASMA"},
        {"system": LOINC, "code": "2345-7", "display": "Glucose [Mass/volume] in Serum or Plasma"},
    ]
    assert obs["valueQuantity"] == {
        "value": Decimal("98"),
        "unit": "mg/dL",
        "system": UCUM,
        "code": "mg/dL",
    }
    assert obs["identifier"] == [{"system": OBS_ID, "value": f"{PREFIX}-160368-{DEVICE_TS}"}]
    assert obs["effectiveDateTime"] == "2026-08-22T08:42:36+02:00"
    assert obs["device"] == {"reference": entries[1]["fullUrl"]}
    assert "bodySite" not in obs and "note" not in obs and "interpretation" not in obs
    text = json.dumps(obs, default=str)
    assert not {code for code in FOREIGN if f'"{code}"' in text}


@pytest.mark.parametrize("specimen", list(SPECIMEN_CODES))
@pytest.mark.parametrize(("unit", "value"), [("mg/dL", "104"), ("mmol/L", "5.80")])
def test_specimen_and_unit_choose_the_codes(specimen: str | None, unit: str, value: str) -> None:
    context = () if specimen is None else (("specimen", specimen),)
    r = glucose_reading(glucose(value, unit), context=context)
    entries = map_reading(r, PATIENT, GATEWAY)
    validate_entries(entries)
    code, ref_id, mass, molar = SPECIMEN_CODES[specimen]
    obs = the_glucose(entries)
    mdc, loinc = obs["code"]["coding"]
    assert (mdc["system"], mdc["code"], mdc["display"]) == (MDC, code, ref_id)
    assert (loinc["system"], loinc["code"]) == (LOINC, mass if unit == "mg/dL" else molar)
    quantity_out = obs["valueQuantity"]
    assert (str(quantity_out["value"]), quantity_out["code"]) == (value, unit)  # never converted
    assert obs["identifier"][0]["value"] == f"{PREFIX}-{code}-{DEVICE_TS}"
    assert primary_observation_code(r) == int(code)
    assert (
        observation_identifier(r, PATIENT, primary_observation_code(r))
        == (obs["identifier"][0]["value"])
    )
    # the specimen is not a context Observation of its own
    assert by_profile(entries, "PhdCodedEnumerationObservation") == []


@pytest.mark.parametrize(
    ("why", "code"), [(Absent.NAN, "not-a-number"), (Absent.POSITIVE_INFINITY, "positive-infinity")]
)
def test_special_value_keeps_the_unit_specific_loinc(why: Absent, code: str) -> None:
    q = Quantity(name="glucose", value=None, unit="mmol/L", absent=why)
    entries = map_reading(glucose_reading(q), PATIENT, GATEWAY)
    validate_entries(entries)
    obs = the_glucose(entries)
    assert "valueQuantity" not in obs
    assert obs["dataAbsentReason"]["coding"][0] == {
        "system": DAR,
        "code": code,
        "display": {
            "not-a-number": "Not a Number (NaN)",
            "positive-infinity": "Positive Infinity (PINF)",
        }[code],
    }
    assert obs["code"]["coding"][1]["code"] == "14749-6"


@pytest.mark.parametrize(("key", "value"), list(CONTEXT_CODES))
def test_each_coded_context_value(key: str, value: str) -> None:
    r = glucose_reading(context=((key, value),))
    entries = map_reading(r, PATIENT, GATEWAY)
    validate_entries(entries)
    context_code, value_code, value_ref = CONTEXT_CODES[(key, value)]
    glucose_entry = by_profile(entries, "PhdNumericObservation")[0]
    (coded_entry,) = by_profile(entries, "PhdCodedEnumerationObservation")
    coded = coded_entry["resource"]
    assert coded["meta"] == {"profile": [CODED]}
    assert coded["category"] == PHD_CATEGORY
    assert coded["code"]["coding"][0]["system"] == MDC
    assert coded["code"]["coding"][0]["code"] == context_code
    assert coded["valueCodeableConcept"] == {
        "coding": [{"system": MDC, "code": value_code, "display": value_ref}]
    }
    assert coded["subject"] == glucose_entry["resource"]["subject"]
    assert coded["effectiveDateTime"] == glucose_entry["resource"]["effectiveDateTime"]
    assert coded["device"] == {"reference": entries[1]["fullUrl"]}
    assert coded["derivedFrom"] == [{"reference": glucose_entry["fullUrl"]}]
    assert coded["identifier"] == [
        {"system": OBS_ID, "value": f"{PREFIX}-{context_code}-{DEVICE_TS}"}
    ]
    assert coded_entry["request"]["ifNoneExist"].startswith(f"identifier={OBS_ID}|")
    assert coded["status"] == "final"
    assert "valueQuantity" not in coded
    # the glucose Observation itself only changes for a finger sample (bodySite)
    plain = the_glucose(map_reading(glucose_reading(), PATIENT, GATEWAY))
    measured = {k: v for k, v in glucose_entry["resource"].items() if k != "bodySite"}
    assert measured == plain
    assert ("bodySite" in glucose_entry["resource"]) == (value == "finger")


def test_meal_postprandial_matches_the_phd_example() -> None:
    # HL7/phd input/examples/meal-context-observation.json: code 8417864, value 8417872.
    entries = map_reading(glucose_reading(context=(("meal", "postprandial"),)), PATIENT, GATEWAY)
    coded = by_profile(entries, "PhdCodedEnumerationObservation")[0]["resource"]
    assert coded["code"]["coding"] == [
        {"system": MDC, "code": "8417864", "display": "MDC_CTXT_GLU_MEAL"}
    ]
    assert coded["valueCodeableConcept"]["coding"][0]["code"] == "8417872"


def test_finger_sample_sets_body_site() -> None:
    entries = map_reading(
        glucose_reading(context=(("sample-location", "finger"),)), PATIENT, GATEWAY
    )
    obs = the_glucose(entries)
    assert obs["bodySite"] == {
        "coding": [{"system": SNOMED, "code": "7569003", "display": "Finger structure"}]
    }
    keys = list(obs)
    assert keys.index("valueQuantity") < keys.index("bodySite") < keys.index("device")


def test_bedtime_meal_has_no_confirmed_code_and_becomes_a_note() -> None:
    entries = map_reading(glucose_reading(context=(("meal", "bedtime"),)), PATIENT, GATEWAY)
    validate_entries(entries)
    assert by_profile(entries, "PhdCodedEnumerationObservation") == []
    obs = the_glucose(entries)
    assert obs["note"] == [{"text": "Meal context: bedtime"}]
    keys = list(obs)
    assert keys.index("valueQuantity") < keys.index("note") < keys.index("device")
    # the note does not touch the identifier
    plain = the_glucose(map_reading(glucose_reading(), PATIENT, GATEWAY))
    assert obs["identifier"] == plain["identifier"]


def test_all_contexts_together_in_table_order_whatever_the_reading_order() -> None:
    context = (
        ("sample-location", "earlobe"),
        ("health", "stress"),
        ("specimen", "capillary-whole-blood"),
        ("tester", "lab"),
        ("meal", "fasting"),
    )
    entries = map_reading(glucose_reading(context=context), PATIENT, GATEWAY)
    validate_entries(entries)
    coded = [e["resource"] for e in by_profile(entries, "PhdCodedEnumerationObservation")]
    assert [c["code"]["coding"][0]["code"] for c in coded] == [
        "8417864",
        "8417884",
        "8417820",
        "8417844",
    ]
    reversed_entries = map_reading(
        glucose_reading(context=tuple(reversed(context))), PATIENT, GATEWAY
    )
    assert reversed_entries == entries
    assert the_glucose(entries)["code"]["coding"][0]["code"] == "160184"
    assert "bodySite" not in the_glucose(entries)  # earlobe: coded only
    urls = {e["fullUrl"] for e in entries}
    assert len(urls) == len(entries)
    for item in entries:
        for ref in collect_references(item["resource"]):
            assert ref in urls


def test_context_retries_are_byte_identical() -> None:
    r = glucose_reading(context=(("meal", "preprandial"), ("tester", "self")))
    first = json.dumps(transaction_bundle(map_reading(r, PATIENT, GATEWAY)), default=str)
    assert json.dumps(transaction_bundle(map_reading(r, PATIENT, GATEWAY)), default=str) == first


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: glucose_reading(context=(("meal", "brunch"),)), "unknown meal value"),
        (lambda: glucose_reading(context=(("mood", "good"),)), "unknown key"),
        (lambda: glucose_reading(context=(("meal", "fasting"), ("meal", "casual"))), "twice"),
        (lambda: glucose_reading(context=(("specimen", "control-solution"),)), "control solution"),
        (lambda: glucose_reading(context=(("specimen", "urine"),)), "unknown specimen"),
        (lambda: glucose_reading(context=(("sample-location", "toe"),)), "unknown location"),
        (lambda: glucose_reading(glucose("1.1", "g/L")), "g/L"),
        (lambda: glucose_reading(glucose("98", "mg/dl")), "not UCUM case"),
        (lambda: glucose_reading(glucose("98"), glucose("99")), "glucose twice"),
        (lambda: glucose_reading(quantity("glucose-trend", "1", "mg/dL/min")), "trend on meter"),
        (lambda: replace(glucose_reading(), site="finger"), "Reading.site on glucose"),
        (lambda: replace(reading(), context=(("meal", "fasting"),)), "context on a weight"),
        (lambda: replace(cgm_reading(), context=(("specimen", "capillary-plasma"),)), "cgm"),
    ],
)
def test_unmappable_glucose_readings(make: Any, why: str) -> None:
    with pytest.raises(MappingError) as caught:
        map_reading(make(), PATIENT, GATEWAY)
    assert PATIENT.value not in str(caught.value), why


def test_error_names_the_unknown_context() -> None:
    with pytest.raises(MappingError, match="brunch"):
        map_reading(glucose_reading(context=(("meal", "brunch"),)), PATIENT, GATEWAY)
    with pytest.raises(MappingError, match="control-solution"):
        primary_observation_code(glucose_reading(context=(("specimen", "control-solution"),)))


# --- CGM ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "value", "loinc", "display"),
    [
        ("mg/dL", "112", "99504-3", "Glucose [Mass/volume] in Interstitial fluid"),
        ("mmol/L", "6.2", "105272-9", "Glucose [Moles/volume] in Interstitial fluid"),
    ],
)
def test_cgm_reading(unit: str, value: str, loinc: str, display: str) -> None:
    r = cgm_reading(glucose(value, unit))
    entries = map_reading(r, PATIENT, GATEWAY)
    validate_entries(entries)
    assert entries[1]["resource"]["specialization"][0]["systemType"]["coding"] == [
        {"system": MDC, "code": "528409", "display": "MDC_DEV_SPEC_PROFILE_CGM"}
    ]
    (obs,) = observations(entries)
    assert obs["meta"] == {"profile": [NUMERIC]}
    assert obs["category"] == PHD_CATEGORY
    assert obs["code"]["coding"] == [
        {"system": MDC, "code": "160212", "display": "MDC_CONC_GLU_ISF"},
        {"system": LOINC, "code": loinc, "display": display},
    ]
    assert str(obs["valueQuantity"]["value"]) == value
    assert obs["identifier"][0]["value"].endswith(f"-160212-{DEVICE_TS}")
    assert obs["identifier"][0]["value"].startswith("D01F2A3B4C5D-")
    assert primary_observation_code(r) == 160212


@pytest.mark.parametrize(("name", "unit"), [("glucose-trend", "mg/dL/min"), ("cgm-quality", "%")])
def test_cgm_quantities_without_a_confirmed_code_are_left_out(name: str, unit: str) -> None:
    r = cgm_reading(glucose("112"), quantity(name, "1.5", unit))
    entries = map_reading(r, PATIENT, GATEWAY)
    assert [o["code"]["coding"][0]["code"] for o in observations(entries)] == ["160212"]
    with pytest.raises(MappingError, match=name):
        map_reading(cgm_reading(quantity(name, "1.5", unit)), PATIENT, GATEWAY)
