"""Profile set ``fr-mesures`` (ANS "Mesures de santé" 3.1.1 for Mon espace santé).

Expected codes, units and values are written out by hand from fhir-mapping.md §3/§4 and the ANS
differentials, never derived from the mapper's tables. Every feed bundle is checked by the ANS /
PHD 1.0.0 validator (``tests/support/ans_profiles.py``), by fhir.resources' R4B models and, at the
end, by the real FHIR test server.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.models import Absent, ClockCheck, DeviceIdentity, PatientRef, Quantity, Reading
from gateway.serialize import dumps
from mappers.errors import MappingError
from mappers.fr_mesures import NotSendable, feed_bundles, map_reading_fr
from mappers.phd import map_reading, observation_identifier
from tests.mappers.factories import (
    BARE_SCALE,
    GATEWAY,
    absent,
    kg,
    quantity,
    reading,
    si_reading,
)
from tests.support import fhir_server as fhir_support
from tests.support.ans_profiles import GLUCOSE, PHD_DEVICE, mes_api_issues, mutated, validator
from tests.support.fhir_server import FhirServer

# The FHIR server fixtures, for this module (folders register their own; see test_fhir_server.py).
fhir_server = fhir_support.fhir_server
fhir_server_session = fhir_support.fhir_server_session

MES = "https://interop.esante.gouv.fr/ig/fhir/mesures/StructureDefinition/"
WEIGHT = MES + "mesures-fr-observation-body-weight"
HEIGHT = MES + "mesures-fr-observation-bodyheight"
BP = MES + "mesures-fr-observation-bp"
HEART_RATE = MES + "mesures-fr-observation-heartrate"
TEMPERATURE = MES + "mesures-fr-observation-body-temperature"
OXYGEN_SAT = MES + "mesures-fr-observation-oxygen-sat"
MOMENT = MES + "mesures-moment-of-measurement"
ORIGINAL_DATA = MES + "mesures-original-data"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MDC = "urn:iso:std:iso:11073:10101"
NOS_LOINC = "https://mos.esante.gouv.fr/NOS/TRE_A04-Loinc/FHIR/TRE-A04-Loinc"
SYSID_OID = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
PHD1_IDENTIFIER_TYPES = "http://hl7.org/fhir/uv/phd/CodeSystem/ContinuaDeviceIdentifiers"
OBS_ID = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
VITAL_SIGNS = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs",
            }
        ]
    }
]

# A Mon espace santé patient: pairing authority OID + idPe (spec §4.8).
PATIENT = PatientRef(system="urn:oid:1.2.250.1.999.7.1", value="3f9c2a7e41b0")
SOLUTION_OID = "1.2.250.1.999.1.3"
SOURCE = "urn:oid:" + SOLUTION_OID
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

BPM = DeviceIdentity(
    address="C4:7C:8D:6A:1F:02",
    system_id="C47C8DFFFE6A1F02",
    manufacturer="ACME Health",
    model="BP-7",
    firmware="1.0.3",
)
THERMOMETER = DeviceIdentity(
    address="E0:7D:EA:11:22:33", manufacturer="ACME Health", model="T-1", firmware="3.2"
)
OXIMETER = DeviceIdentity(
    address="00:1C:05:FF:E8:75", system_id="74E8FFFEFF051C01", manufacturer="ACME", model="OX-2"
)
METER = DeviceIdentity(
    address="F4:5E:AB:A8:08:32",
    system_id="00601900010E9234",
    manufacturer="ACME Health",
    model="GL-50",
    firmware="4.1",
)
ANALYSER = DeviceIdentity(address="C0:ED:6E:00:00:09", manufacturer="ACME", model="BC-9")
CGM = DeviceIdentity(address="D0:1F:2A:3B:4C:5D", manufacturer="ACME Health", model="CG-1")


def mapped(r: Reading, patient: PatientRef = PATIENT) -> dict[str, Any]:
    return map_reading_fr(r, patient, GATEWAY, solution_oid=SOLUTION_OID)


def obs(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    ]


def by_profile(bundle: dict[str, Any], profile: str) -> dict[str, Any]:
    (found,) = [o for o in obs(bundle) if o["meta"]["profile"] == [profile]]
    return found


def bp_reading(*quantities: Quantity) -> Reading:
    quantities = quantities or (
        quantity("systolic", "121", "mm[Hg]"),
        quantity("diastolic", "79", "mm[Hg]"),
        quantity("mean-arterial-pressure", "93", "mm[Hg]"),
        quantity("pulse-rate", "72", "/min"),
    )
    return reading(*quantities, kind="blood-pressure", device=BPM)


def temperature_reading(value: str = "36.8", unit: str = "Cel", site: str | None = None) -> Reading:
    r = reading(quantity("body-temperature", value, unit), kind="body-temperature")
    return replace(r, device=THERMOMETER, site=site)


def spo2_reading(*quantities: Quantity, characteristic: str = "2A5E") -> Reading:
    quantities = quantities or (quantity("spo2", "97", "%"), quantity("pulse-rate", "64", "/min"))
    r = reading(*quantities, kind="spo2", device=OXIMETER)
    return replace(r, characteristic=characteristic)


def glucose_reading(value: str = "105", unit: str = "mg/dL", *context: tuple[str, str]) -> Reading:
    r = reading(quantity("glucose", value, unit), kind="blood-glucose", device=METER)
    return replace(r, context=context)


def bca_reading(*quantities: Quantity) -> Reading:
    return reading(*quantities, kind="body-composition", device=ANALYSER)


def cgm_reading() -> Reading:
    return reading(quantity("glucose", "112", "mg/dL"), kind="cgm", device=CGM)


SENDABLE: dict[str, Callable[[], Reading]] = {
    "weight": si_reading,
    "weight-imperial": lambda: reading(
        quantity("body-weight", "150.20", "[lb_av]"), quantity("body-height", "70.1", "[in_i]")
    ),
    "weight-bare-scale": lambda: reading(kg("80.05"), device=BARE_SCALE),
    "blood-pressure": bp_reading,
    "blood-pressure-kpa": lambda: bp_reading(
        quantity("systolic", "16.1", "kPa"),
        quantity("diastolic", "10.5", "kPa"),
        quantity("mean-arterial-pressure", "12.4", "kPa"),
        quantity("pulse-rate", "72", "/min"),
    ),
    "temperature": temperature_reading,
    "temperature-fahrenheit": lambda: temperature_reading("98.6", "[degF]", site="ear"),
    "spo2": spo2_reading,
    "glucose": lambda: glucose_reading("105", "mg/dL", ("meal", "preprandial")),
    "glucose-molar": lambda: glucose_reading(
        "5.5", "mmol/L", ("specimen", "capillary-whole-blood"), ("meal", "fasting")
    ),
    "body-composition": lambda: bca_reading(
        kg("70.2"),
        quantity("body-height", "1.812", "m"),
        quantity("body-fat", "22.5", "%"),
        quantity("bmi", "21.4", "kg/m2"),
        quantity("impedance", "512", "Ohm"),
    ),
}


# --------------------------------------------------------------------------- checks everywhere


def check_feed_bundles(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """Every feed bundle passes the ANS/PHD validator, the MES rules and R4B; returned."""
    ans = validator()
    feeds = feed_bundles(bundle)
    assert len(feeds) == len(obs(bundle))
    for feed in feeds:
        profiles = feed["entry"][-1]["resource"]["meta"]["profile"]
        # Glucose is outside the 3.1.1 bundle's Observation list: the documented deviation.
        allowed = (GLUCOSE,) if profiles == [GLUCOSE] else ()
        assert ans.validate_feed_bundle(feed, also_allowed=allowed) == []
        Bundle.model_validate(json.loads(dumps(feed)))
        for entry in feed["entry"]:
            resource = json.loads(dumps(entry["resource"]))
            model = Device if resource["resourceType"] == "Device" else Observation
            model.model_validate(resource)
    return feeds


def values_of(bundle: dict[str, Any]) -> dict[str, Any]:
    """Profile -> valueQuantity (or the component (code, value, unit) triples for BP)."""
    out: dict[str, Any] = {}
    for o in obs(bundle):
        (profile,) = o["meta"]["profile"]
        if "component" in o:
            out[profile] = [
                (
                    c["code"]["coding"][0]["code"],
                    c["valueQuantity"]["value"],
                    c["valueQuantity"]["code"],
                )
                for c in o["component"]
            ]
        else:
            out[profile] = (o["valueQuantity"]["value"], o["valueQuantity"]["code"])
    return out


def same_decimal(a: Decimal, b: str) -> bool:
    """Equal and written the same way (65.700 is not 65.7 on the wire)."""
    return str(a) == b


# --------------------------------------------------------------------------- every kind


@pytest.mark.parametrize("name", sorted(SENDABLE))
def test_every_feed_bundle_validates(name: str) -> None:
    bundle = mapped(SENDABLE[name]())
    assert bundle["type"] == "transaction"
    assert bundle["entry"][0]["resource"]["resourceType"] == "Device"
    assert all(e["resource"]["resourceType"] == "Observation" for e in bundle["entry"][1:])
    check_feed_bundles(bundle)
    for o in obs(bundle):
        assert o["meta"]["source"] == SOURCE
        assert o["status"] == "final"
        assert o["category"] == VITAL_SIGNS
        assert o["subject"] == {"identifier": {"system": PATIENT.system, "value": PATIENT.value}}
        assert re.fullmatch(r"2026-08-22T08:42:36\+02:00", o["effectiveDateTime"])
        assert "bodySite" not in o and "method" not in o and "dataAbsentReason" not in o
        assert b"39156-5" not in dumps(o)  # never a BMI


def test_weight_height_and_no_bmi() -> None:
    bundle = mapped(si_reading())
    assert [o["meta"]["profile"] for o in obs(bundle)] == [[WEIGHT], [HEIGHT]]
    weight, height = obs(bundle)
    assert weight["code"] == {
        "coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]
    }
    assert weight["valueQuantity"] == {
        "value": Decimal("65.700"),
        "unit": "kg",
        "system": UCUM,
        "code": "kg",
    }
    assert same_decimal(weight["valueQuantity"]["value"], "65.700")
    assert height["code"]["coding"] == [
        {"system": LOINC, "code": "8302-2", "display": "Body height"}
    ]
    assert height["valueQuantity"]["code"] == "cm"
    assert same_decimal(height["valueQuantity"]["value"], "175.0")  # 1.750 m, exponent moved


def test_imperial_units_are_converted_exactly() -> None:
    values = values_of(mapped(SENDABLE["weight-imperial"]()))
    # 150.20 lb x 0.45359237 = 68.129573974 kg; resolution 0.01 lb = 0.0045 kg -> 0.001 kg
    assert str(values[WEIGHT][0]) == "68.130" and values[WEIGHT][1] == "kg"
    # 70.1 in x 2.54 = 178.054 cm; resolution 0.1 in = 0.254 cm -> 0.1 cm
    assert str(values[HEIGHT][0]) == "178.1" and values[HEIGHT][1] == "cm"
    grams = values_of(mapped(reading(quantity("body-weight", "65700", "g"))))
    assert str(grams[WEIGHT][0]) == "65.700"


@pytest.mark.parametrize(
    ("value", "unit", "expected", "target"),
    [
        ("99.99", "[lb_av]", "45.355", "kg"),
        ("70", "[in_i]", "178", "cm"),  # 177.8 at the device's 1 in = 2.54 cm resolution
        ("98.6", "[degF]", "37.00", "Cel"),
        ("100.4", "[degF]", "38.00", "Cel"),
        ("32.0", "[degF]", "0.00", "Cel"),
        ("16.1", "kPa", "120.8", "mm[Hg]"),  # 16100 / 133.322387415 = 120.7599...
        ("5.5", "mmol/L", "99", "mg/dL"),  # 5.5 x 18.0156 = 99.0858
        ("5.55", "mmol/L", "100.0", "mg/dL"),
        ("6.2", "mmol/L", "112", "mg/dL"),
    ],
)
def test_conversions(value: str, unit: str, expected: str, target: str) -> None:
    if unit in ("[lb_av]", "[in_i]"):
        name = "body-weight" if unit == "[lb_av]" else "body-height"
        r = reading(quantity(name, value, unit))
    elif unit == "[degF]":
        r = temperature_reading(value, unit)
    elif unit == "kPa":
        r = bp_reading(quantity("systolic", value, unit), quantity("diastolic", "10.5", unit))
    else:
        r = glucose_reading(value, unit, ("meal", "fasting"))
    bundle = mapped(r)
    first = obs(bundle)[0]
    got = first["component"][0] if "component" in first else first
    assert str(got["valueQuantity"]["value"]) == expected
    assert got["valueQuantity"]["code"] == target
    check_feed_bundles(bundle)


def test_blood_pressure_and_heart_rate() -> None:
    bundle = mapped(bp_reading())
    panel, pulse = obs(bundle)
    assert panel["meta"]["profile"] == [BP] and pulse["meta"]["profile"] == [HEART_RATE]
    assert panel["code"]["coding"] == [
        {
            "system": LOINC,
            "code": "85354-9",
            "display": "Blood pressure panel with all children optional",
        }
    ]
    assert "valueQuantity" not in panel
    assert values_of(bundle)[BP] == [
        ("8480-6", 121, "mm[Hg]"),
        ("8462-4", 79, "mm[Hg]"),
        ("8478-0", 93, "mm[Hg]"),
    ]
    assert [c["valueQuantity"]["unit"] for c in panel["component"]] == ["mmHg"] * 3
    assert pulse["code"]["coding"] == [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]
    assert pulse["valueQuantity"] == {"value": 72, "unit": "/min", "system": UCUM, "code": "/min"}
    kpa = values_of(mapped(SENDABLE["blood-pressure-kpa"]()))[BP]
    assert [(code, str(value), unit) for code, value, unit in kpa] == [
        ("8480-6", "120.8", "mm[Hg]"),
        ("8462-4", "78.8", "mm[Hg]"),
        ("8478-0", "93.0", "mm[Hg]"),
    ]


def test_nan_pulse_keeps_the_pressure_and_nan_mean_drops_the_component() -> None:
    r = bp_reading(
        quantity("systolic", "121", "mm[Hg]"),
        quantity("diastolic", "79", "mm[Hg]"),
        absent("mean-arterial-pressure", Absent.NAN, "mm[Hg]"),
        absent("pulse-rate", Absent.NAN, "/min"),
    )
    bundle = mapped(r)
    (panel,) = obs(bundle)
    assert [c["code"]["coding"][0]["code"] for c in panel["component"]] == ["8480-6", "8462-4"]
    check_feed_bundles(bundle)


def test_nan_systolic_sends_the_pulse_only() -> None:
    r = bp_reading(
        absent("systolic", Absent.NRES, "mm[Hg]"),
        quantity("diastolic", "79", "mm[Hg]"),
        quantity("pulse-rate", "72", "/min"),
    )
    bundle = mapped(r)
    assert [o["meta"]["profile"] for o in obs(bundle)] == [[HEART_RATE]]
    check_feed_bundles(bundle)


def test_temperature_in_celsius_without_body_site() -> None:
    bundle = mapped(temperature_reading("36.8", site="ear"))
    (temp,) = obs(bundle)
    assert temp["meta"]["profile"] == [TEMPERATURE]
    assert temp["code"]["coding"] == [
        {"system": LOINC, "code": "8310-5", "display": "Body temperature"}
    ]
    assert temp["valueQuantity"] == {
        "value": Decimal("36.8"),
        "unit": "°C",
        "system": UCUM,
        "code": "Cel",
    }
    assert "bodySite" not in temp  # J151 content is not at hand: not sent
    with pytest.raises(MappingError, match="body site"):
        mapped(temperature_reading(site="elbow"))


def test_spo2_spot_check_and_pulse() -> None:
    bundle = mapped(spo2_reading())
    sat, pulse = obs(bundle)
    assert sat["meta"]["profile"] == [OXYGEN_SAT]
    assert sat["code"]["coding"] == [
        {"system": LOINC, "code": "2708-6", "display": "Oxygen saturation in Arterial blood"}
    ]
    assert sat["valueQuantity"] == {"value": 97, "unit": "%", "system": UCUM, "code": "%"}
    assert pulse["meta"]["profile"] == [HEART_RATE]
    # the oximeter's own MDC pulse code keeps its identifier apart from a BP monitor's pulse
    assert pulse["identifier"][0]["value"].split("-")[-2] == "149530"


def test_glucose_with_meal_context() -> None:
    bundle = mapped(glucose_reading("105", "mg/dL", ("meal", "preprandial")))
    (glucose,) = obs(bundle)
    assert glucose["meta"]["profile"] == [GLUCOSE]
    assert glucose["code"] == {"coding": [{"system": NOS_LOINC, "code": "2345-7"}]}
    assert glucose["valueQuantity"] == {
        "value": 105,
        "unit": "mg/dL",
        "system": UCUM,
        "code": "mg/dL",
    }
    assert glucose["extension"] == [
        {
            "url": MOMENT,
            "valueCodeableConcept": {"coding": [{"system": NOS_LOINC, "code": "88365-2"}]},
        }
    ]
    assert "effectiveDateTime" in glucose and "effectivePeriod" not in glucose


@pytest.mark.parametrize(
    ("meal", "code"),
    [
        ("fasting", "53049-3"),
        ("preprandial", "88365-2"),
        ("postprandial", "16915-1"),
        ("casual", "LA46-8"),
        ("bedtime", "LA46-8"),
    ],
)
def test_glucose_moment_of_measurement(meal: str, code: str) -> None:
    bundle = mapped(glucose_reading("105", "mg/dL", ("meal", meal)))
    (glucose,) = obs(bundle)
    (moment,) = [x for x in glucose["extension"] if x["url"] == MOMENT]
    assert moment["valueCodeableConcept"]["coding"] == [{"system": NOS_LOINC, "code": code}]
    check_feed_bundles(bundle)


def test_converted_glucose_keeps_the_original_data() -> None:
    r = SENDABLE["glucose-molar"]()
    bundle = mapped(r)
    (glucose,) = obs(bundle)
    assert glucose["valueQuantity"]["value"] == 99 and glucose["valueQuantity"]["code"] == "mg/dL"
    (original,) = [x for x in glucose["extension"] if x["url"] == ORIGINAL_DATA]
    assert original["extension"] == [
        {"url": "has-been-converted", "valueBoolean": True},
        {
            "url": "original-code",
            "valueCodeableConcept": {
                "coding": [
                    {
                        "system": NOS_LOINC,
                        "code": "14743-9",
                        "display": "Glucose [Moles/volume] in Capillary blood by Glucometer",
                    }
                ]
            },
        },
        {
            "url": "original-value",
            "valueQuantity": {
                "value": Decimal("5.5"),
                "unit": "mmol/L",
                "system": UCUM,
                "code": "mmol/L",
            },
        },
    ]
    # the specimen still decides the PHD identifier (capillary whole blood, MDC 160184)
    assert glucose["identifier"][0]["value"] == observation_identifier(r, PATIENT, 160184)


def test_body_composition_sends_weight_and_height_only() -> None:
    bundle = mapped(SENDABLE["body-composition"]())
    assert values_of(bundle) == {WEIGHT: (Decimal("70.2"), "kg"), HEIGHT: (Decimal("181.2"), "cm")}
    specialization = bundle["entry"][0]["resource"]["specialization"][0]["systemType"]
    assert specialization["coding"][0]["code"] == "528404"


# --------------------------------------------------------------------------- nothing to send


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: reading(quantity("bmi", "21.5", "kg/m2")), "BMI"),
        (lambda: reading(absent("body-weight", Absent.NAN)), "no value"),
        (lambda: reading(absent("body-weight", Absent.UNSUCCESSFUL)), "no value"),
        (
            lambda: reading(absent("body-weight", Absent.NAN), quantity("bmi", "21.5", "kg/m2")),
            "BMI",
        ),
        (cgm_reading, "continuous glucose monitor"),
        (lambda: spo2_reading(characteristic="2A5F"), "continuous pulse-oximetry"),
        (
            lambda: spo2_reading(
                absent("spo2", Absent.NAN, "%"), absent("pulse-rate", Absent.NAN, "/min")
            ),
            "no value",
        ),
        (lambda: glucose_reading("105", "mg/dL"), "meal context"),
        (lambda: glucose_reading("105", "mg/dL", ("specimen", "capillary-plasma")), "meal context"),
        (
            lambda: glucose_reading(
                "105", "mg/dL", ("specimen", "interstitial-fluid"), ("meal", "fasting")
            ),
            "interstitial",
        ),
        (
            lambda: bca_reading(
                quantity("body-fat", "22.5", "%"), quantity("bmi", "21.4", "kg/m2")
            ),
            "no ANS",
        ),
        (lambda: replace(si_reading(), status=("testing-data",)), "test data"),
        (lambda: replace(spo2_reading(), status=("questionable-measurement",)), "questionable"),
        (lambda: replace(spo2_reading(), status=("invalid-measurement",)), "invalid"),
    ],
)
def test_not_sendable(make: Any, why: str) -> None:
    with pytest.raises(NotSendable, match=why) as caught:
        mapped(make())
    message = str(caught.value)
    for number in ("21.5", "22.5", "105", "97", "112"):
        assert number not in message  # no health value in the reason


def test_clock_battery_and_coded_context_are_not_sent() -> None:
    clock = ClockCheck(
        device_time=datetime(2026, 8, 22, 8, 43),
        gateway_time=datetime(2026, 8, 22, 6, 43, tzinfo=UTC),
    )
    plain = mapped(si_reading())
    assert dumps(mapped(replace(si_reading(), battery=80, clock=clock))) == dumps(plain)
    context = (("meal", "fasting"), ("tester", "self"), ("sample-location", "finger"))
    (glucose,) = obs(mapped(glucose_reading("105", "mg/dL", *context)))
    assert [x["url"] for x in glucose["extension"]] == [MOMENT]
    assert "bodySite" not in glucose


def test_status_bits_do_not_stop_the_measurement() -> None:
    r = replace(bp_reading(), status=("irregular-pulse",))
    bundle = mapped(r)
    assert [o["meta"]["profile"] for o in obs(bundle)] == [[BP], [HEART_RATE]]
    assert b"8410608" not in dumps(bundle)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "patient",
    [
        PatientRef(system="http://example.org/patients", value="3f9c2a7e41b0"),
        PatientRef(system="urn:oid:1.2.x", value="3f9c2a7e41b0"),
        PatientRef(system="urn:oid:", value="3f9c2a7e41b0"),
        PatientRef(system="urn:oid:1.2.250.1.999.7.1", value=" padded "),
    ],
)
def test_non_oid_patient_is_a_configuration_error(patient: PatientRef) -> None:
    with pytest.raises(MappingError) as caught:
        mapped(si_reading(), patient)
    assert not isinstance(caught.value, NotSendable)
    assert "3f9c2a7e41b0" not in str(caught.value)


@pytest.mark.parametrize("oid", ["", "1", "1.2.x", "urn:oid:1.2.3", "01.2"])
def test_bad_solution_oid_is_a_configuration_error(oid: str) -> None:
    with pytest.raises(MappingError) as caught:
        map_reading_fr(si_reading(), PATIENT, GATEWAY, solution_oid=oid)
    assert not isinstance(caught.value, NotSendable)


def test_driver_bugs_are_mapping_errors_not_not_sendable() -> None:
    bad = [
        reading(quantity("body-weight", "65", "cm")),  # a weight in cm
        reading(kg("65"), kg("66")),  # twice the same quantity
        reading(quantity("heart-beat", "65", "/min")),  # unknown name
        bp_reading(quantity("diastolic", "79", "mm[Hg]")),  # no systolic
        replace(glucose_reading(), context=(("meal", "brunch"),)),
        replace(si_reading(), effective_time=si_reading().effective_time.replace(tzinfo=None)),
    ]
    for r in bad:
        with pytest.raises(MappingError) as caught:
            mapped(r)
        assert not isinstance(caught.value, NotSendable)


# --------------------------------------------------------------------------- identity, device


def test_observation_identifiers_are_the_phd_ones() -> None:
    for name, make in SENDABLE.items():
        r = make()
        fr = [o["identifier"] for o in obs(mapped(r))]
        try:
            phd_entries = map_reading(r, PATIENT, GATEWAY)
        except MappingError:  # the phd set refuses kPa: the same codes as in mm[Hg]
            assert name == "blood-pressure-kpa"
            phd_patient_ids = {observation_identifier(r, PATIENT, mdc) for mdc in (150020, 149546)}
        else:
            phd_patient_ids = {
                e["resource"]["identifier"][0]["value"]
                for e in phd_entries
                if e["resource"]["resourceType"] == "Observation"
            }
        for identifier in fr:
            assert identifier[0]["system"] == OBS_ID, name
            assert identifier[0]["value"] in phd_patient_ids, name


def test_entries_requests_and_references() -> None:
    bundle = mapped(si_reading())
    device_entry, *observation_entries = bundle["entry"]
    device = device_entry["resource"]
    assert UUID.fullmatch(device["id"])
    assert device_entry["fullUrl"] == "urn:uuid:" + device["id"]
    assert device_entry["request"] == {
        "method": "POST",
        "url": "Device",
        "ifNoneExist": f"identifier={SYSID_OID}|74-E8-FF-FE-FF-05-1C-00",
    }
    for entry in observation_entries:
        assert entry["request"] == {"method": "POST", "url": "Observation"}  # no ifNoneExist
        assert UUID.fullmatch(entry["fullUrl"].removeprefix("urn:uuid:"))
        assert entry["resource"]["device"] == {"reference": "Device/" + device["id"]}
    # the same UUIDs as the phd set's for the same device and measurement
    phd_urls = {e["fullUrl"] for e in map_reading(si_reading(), PATIENT, GATEWAY)}
    assert {e["fullUrl"] for e in bundle["entry"]} <= phd_urls


def test_device_in_phd_1_0_0_form() -> None:
    device = mapped(si_reading())["entry"][0]["resource"]
    assert device["meta"] == {"profile": [PHD_DEVICE]}
    assert device["identifier"] == [
        {
            "type": {
                "coding": [
                    {
                        "system": PHD1_IDENTIFIER_TYPES,
                        "code": "SYSID",
                        "display": "IEEE 11073 System Identifier",
                    }
                ]
            },
            "system": SYSID_OID,
            "value": "74-E8-FF-FE-FF-05-1C-00",
        },
        {
            "type": {
                "coding": [
                    {
                        "system": PHD1_IDENTIFIER_TYPES,
                        "code": "BTMAC",
                        "display": "Bluetooth MAC address",
                    }
                ]
            },
            "system": "http://hl7.org/fhir/sid/eui-48/bluetooth",
            "value": "00-1C-05-FF-E8-74",
        },
    ]
    assert (device["manufacturer"], device["modelNumber"], device["serialNumber"]) == (
        "ACME Health",
        "WS-100",
        "SN0042",
    )
    assert device["type"] == {
        "coding": [{"system": MDC, "code": "65573", "display": "MDC_MOC_VMS_MDS_SIMP"}]
    }
    assert device["specialization"] == [
        {
            "systemType": {
                "coding": [
                    {"system": MDC, "code": "528399", "display": "MDC_DEV_SPEC_PROFILE_SCALE"}
                ]
            },
            "version": "1",
        }
    ]


def test_device_without_system_id_gets_an_eui64_from_its_address() -> None:
    bundle = mapped(reading(kg("80.05"), device=BARE_SCALE))
    entry = bundle["entry"][0]
    device = entry["resource"]
    # a4:c1:38:0b:2e:7f -> OUI A4-C1-38, FF-FE, 0B-2E-7F (IEEE EUI-48 -> EUI-64)
    assert device["identifier"][0]["value"] == "A4-C1-38-FF-FE-0B-2E-7F"
    assert device["identifier"][1]["value"] == "A4-C1-38-0B-2E-7F"
    assert entry["request"]["ifNoneExist"] == f"identifier={SYSID_OID}|A4-C1-38-FF-FE-0B-2E-7F"
    # nothing known about it: data-absent-reason, no made-up name, no placeholder version
    assert "manufacturer" not in device and "_manufacturer" in device
    assert "version" not in device
    check_feed_bundles(bundle)


def test_one_device_per_identity_shared_and_immutable() -> None:
    first = mapped(si_reading())["entry"][0]
    second = mapped(reading(kg("70.0")))["entry"][0]
    assert first is second  # cached: built once per device and kind
    with pytest.raises(TypeError):
        first["resource"]["manufacturer"] = "someone else"


# --------------------------------------------------------------------------- feed bundles


def test_feed_bundles_split_one_observation_each() -> None:
    bundle = mapped(bp_reading())
    before = dumps(bundle)
    feeds = feed_bundles(bundle)
    assert dumps(bundle) == before  # pure
    assert [len(f["entry"]) for f in feeds] == [2, 2]
    for feed, observation_entry in zip(feeds, bundle["entry"][1:], strict=True):
        assert feed["resourceType"] == "Bundle" and feed["type"] == "transaction"
        assert feed["entry"] == [bundle["entry"][0], observation_entry]
    assert [dumps(f) for f in feed_bundles(bundle)] == [dumps(f) for f in feeds]


def test_feed_bundles_refuse_what_map_reading_fr_never_makes() -> None:
    bundle = mapped(si_reading())
    device = bundle["entry"][0]
    for bad in (
        {**bundle, "type": "batch"},
        {**bundle, "entry": [device, device, *bundle["entry"][1:]]},
        {**bundle, "entry": [device]},
        {**bundle, "entry": [*bundle["entry"], {"resource": {"resourceType": "Patient"}}]},
    ):
        with pytest.raises(MappingError):
            feed_bundles(bad)
    observation_only = {**bundle, "entry": bundle["entry"][1:]}
    assert [f["entry"] for f in feed_bundles(observation_only)] == [
        [e] for e in bundle["entry"][1:]
    ]


@pytest.mark.parametrize("name", sorted(SENDABLE))
def test_deterministic(name: str) -> None:
    first = [dumps(f) for f in feed_bundles(mapped(SENDABLE[name]()))]
    again = [dumps(f) for f in feed_bundles(mapped(SENDABLE[name]()))]
    assert first == again


def test_glucose_is_outside_the_strict_3_1_1_feed_bundle() -> None:
    """ANS 3.1.1 lists no glucose profile in the feed bundle (spec §4.2, §6.4): sent anyway,
    as the MES API's glucose rules expect; the strict check says so."""
    (feed,) = feed_bundles(mapped(SENDABLE["glucose"]()))
    issues = validator().validate_feed_bundle(feed)
    assert issues == [
        "MesBundleFluxAlimentation: Bundle.entry[1]: the resource claims none of the profiles"
        " of slice mes-observation"
    ]


# --------------------------------------------------------------------------- the validator itself


def ans_example(name: str) -> dict[str, Any]:
    return copy.deepcopy(validator().examples[name])


EXAMPLES = [
    "Observation-example-mes-fr-observation-body-temperature-001.json",
    "Observation-example-mes-fr-observation-body-weight-001.json",
    "Observation-example-mes-fr-observation-bp-001.json",
    "Observation-example-mes-fr-observation-glucose-001.json",
    "Observation-example-mes-fr-observation-heartrate-001.json",
    "Observation-example-mes-fr-observation-oxygen-sat-001.json",
    "Device-example-mes-fr-phd-device-001.json",
]
EXAMPLE_BUNDLE = "Bundle-example-mes-fr-bundle-body-weight.json"


@pytest.mark.parametrize("name", EXAMPLES)
def test_validator_accepts_the_ans_examples(name: str) -> None:
    assert validator().validate(ans_example(name)) == []


def test_validator_accepts_the_ans_feed_bundle_example() -> None:
    bundle = ans_example(EXAMPLE_BUNDLE)
    assert validator().validate_feed_bundle(bundle, mes_api_rules=False) == []
    # The published example predates the flux page's mandatory Device ifNoneExist (spec §5.16).
    assert mes_api_issues(bundle) == [
        "MES: the Device entry needs ifNoneExist identifier=urn:oid:<oid>|<value>"
    ]


def _drop(path: str) -> Any:
    def change(resource: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = resource
        for step in parents:
            node = node[int(step)] if step.isdigit() else node[step]
        del node[int(last) if last.isdigit() else last]

    return change


def _set(path: str, value: Any) -> Any:
    def change(resource: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = resource
        for step in parents:
            node = node[int(step)] if step.isdigit() else node[step]
        node[int(last) if last.isdigit() else last] = value

    return change


WEIGHT_EX = "Observation-example-mes-fr-observation-body-weight-001.json"
BP_EX = "Observation-example-mes-fr-observation-bp-001.json"
GLUCOSE_EX = "Observation-example-mes-fr-observation-glucose-001.json"
SAT_EX = "Observation-example-mes-fr-observation-oxygen-sat-001.json"
TEMP_EX = "Observation-example-mes-fr-observation-body-temperature-001.json"
DEVICE_EX = "Device-example-mes-fr-phd-device-001.json"


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        (WEIGHT_EX, _drop("status"), "Observation.status: minimum cardinality"),
        (WEIGHT_EX, _drop("subject"), "Observation.subject: minimum cardinality"),
        (WEIGHT_EX, _set("valueQuantity.code", "[lb_av]"), "valueQuantity: does not match"),
        (WEIGHT_EX, _set("code.coding.0.code", "8302-2"), "Observation.code.coding:base"),
        (WEIGHT_EX, _set("category.0.coding.0.code", "laboratory"), "Observation.category:VSCat"),
        (WEIGHT_EX, _drop("valueQuantity"), "vs-2"),
        (WEIGHT_EX, _set("device", {"reference": "Patient/x"}), "Observation.device: reference"),
        (WEIGHT_EX, _set("extension.0.valueInteger", 3), "mesures-reason-for-measurement"),
        (TEMP_EX, _set("valueQuantity.code", "[degF]"), "does not match the pattern"),
        (SAT_EX, _set("valueQuantity.code", "1"), "valueQuantity.code: does not match the fixed"),
        (SAT_EX, _set("category.0.coding.0.display", "Signes vitaux"), "VSCat.coding.display"),
        (BP_EX, _drop("component.0"), "component:SystolicBP: minimum cardinality"),
        (
            BP_EX,
            _set("component.1.valueQuantity.code", "kPa"),
            "DiastolicBP.value[x]:valueQuantity.code",
        ),
        (BP_EX, _set("effectivePeriod", {"start": "2012-09-17"}), "effectivePeriod is not allowed"),
        (BP_EX, _set("bodySite.coding.0.code", "7569003"), "JDV_J149"),
        (GLUCOSE_EX, _set("valueQuantity.code", "mmol/L"), "JDV_J163"),
        (GLUCOSE_EX, _set("extension.1.valueCodeableConcept.coding.0.code", "1234-5"), "JDV_J157"),
        (
            GLUCOSE_EX,
            lambda o: o["extension"][1]["valueCodeableConcept"]["coding"].append(
                {"system": NOS_LOINC, "code": "53049-3"}
            ),
            "value[x].coding: maximum cardinality 1",
        ),
        (GLUCOSE_EX, _drop("code.coding.0.system"), "Observation.code.coding.system"),
        (GLUCOSE_EX, lambda o: o["referenceRange"].append({}), "referenceRange: maximum"),
        (DEVICE_EX, _drop("manufacturer"), "Device.manufacturer: minimum cardinality"),
        (DEVICE_EX, _drop("identifier.0"), "Device.identifier:systemIdIdentifier: minimum"),
        (
            DEVICE_EX,
            _set(
                "identifier.0.type.coding.0.system",
                "http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers",
            ),
            "systemIdIdentifier: minimum",  # the PHD 2.0 URL: not the 1.0.0 SYSID slice
        ),
        (DEVICE_EX, _set("identifier.0.system", "urn:oid:1.2.3"), "systemIdIdentifier.system"),
        (DEVICE_EX, _set("type.coding.0.code", "65574"), "Device.type.coding:MDCType.code"),
        (DEVICE_EX, _drop("specialization.0.version"), "Device.specialization.version"),
        (DEVICE_EX, _set("meta.profile", ["http://example.org/Other"]), "claims no profile"),
    ],
)
def test_validator_rejects_mutated_examples(name: str, change: Any, expected: str) -> None:
    issues = validator().validate(mutated(ans_example(name), change))
    assert any(expected in issue for issue in issues), issues


def test_validator_rejects_mutated_feed_bundles() -> None:
    ans = validator()
    (feed,) = feed_bundles(mapped(reading(kg("65.700"))))
    assert ans.validate_feed_bundle(feed) == []
    observation = feed["entry"][1]
    second = copy.deepcopy(observation)
    second["fullUrl"] = "urn:uuid:00000000-0000-5000-8000-000000000000"
    cases = {
        "two observations": (
            {**feed, "entry": [*feed["entry"], second]},
            "Bundle.entry:mes-observation: maximum cardinality 1",
        ),
        "no observation": ({**feed, "entry": feed["entry"][:1]}, "mes-observation: minimum"),
        "PUT device": (
            mutated(feed, _set("entry.0.request.method", "PUT")),
            "mes-device.request.method",
        ),
        "batch": (mutated(feed, _set("type", "batch")), "Bundle.type: does not match"),
        "no ifNoneExist": (
            mutated(feed, _drop("entry.0.request.ifNoneExist")),
            "needs ifNoneExist",
        ),
        "ifNoneExist on another identifier": (
            mutated(feed, _set("entry.0.request.ifNoneExist", "identifier=urn:oid:1.2.3|AB-CD")),
            "names none of the Device's identifiers",
        ),
        "link by fullUrl": (
            mutated(feed, _set("entry.1.resource.device.reference", feed["entry"][0]["fullUrl"])),
            "Device/<the bundled Device.id>",
        ),
        "conditional create of the observation": (
            mutated(feed, _set("entry.1.request.ifNoneExist", "identifier=x")),
            "no conditional create",
        ),
        "no value": (
            mutated(feed, _drop("entry.1.resource.valueQuantity")),
            "without a value is refused",
        ),
        "subject by reference": (
            mutated(feed, _set("entry.1.resource.subject", {"reference": "Patient/1"})),
            "subject.identifier",
        ),
        "meta.source not an OID": (
            mutated(feed, _set("entry.1.resource.meta.source", "https://example.org")),
            "meta.source",
        ),
        "device not PhdDevice": (
            mutated(feed, _set("entry.0.resource.meta.profile", ["http://example.org/D"])),
            "claims none of the profiles of slice mes-device",
        ),
    }
    for label, (bad, expected) in cases.items():
        issues = ans.validate_feed_bundle(bad)
        assert any(expected in issue for issue in issues), (label, issues)


def test_validator_reports_what_it_could_not_check() -> None:
    ans = validator()
    ans.validate(ans_example(DEVICE_EX))  # has property entries: slices without fixed values
    assert any("Device.property" in item for item in ans.unchecked)


# --------------------------------------------------------------------------- properties


def _decimals(low: int, high: int) -> st.SearchStrategy[Decimal]:
    return st.builds(lambda m, e: Decimal(m).scaleb(e), st.integers(low, high), st.integers(-3, 1))


weights = st.one_of(
    st.tuples(_decimals(1, 40000), st.sampled_from(["kg", "[lb_av]"])),
    st.tuples(_decimals(100, 9000000), st.just("g")),
)
temperatures = st.tuples(_decimals(200, 4500), st.sampled_from(["Cel", "[degF]"]))
special = st.sampled_from(list(Absent))


def _back(value: Decimal, unit: str, device_value: Decimal) -> Decimal:
    """The MES value converted back to the device unit, rounded to the device's resolution."""
    exact = Fraction(value)
    back = {
        "kg": exact,
        "g": exact * 1000,
        "[lb_av]": exact / Fraction("0.45359237"),
        "Cel": exact,
        "[degF]": exact * Fraction(9, 5) + 32,
    }[unit]
    exponent = device_value.as_tuple().exponent
    assert isinstance(exponent, int)
    return Decimal(round(back / Fraction(10) ** exponent)).scaleb(exponent)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    weight=st.none() | weights,
    weight_absent=st.none() | special,
    temperature=temperatures,
    temperature_absent=st.none() | special,
    with_bmi=st.booleans(),
)
def test_random_weights_and_temperatures_validate_or_are_not_sendable(
    weight: tuple[Decimal, str] | None,
    weight_absent: Absent | None,
    temperature: tuple[Decimal, str],
    temperature_absent: Absent | None,
    with_bmi: bool,
) -> None:
    quantities: list[Quantity] = []
    if weight is not None:
        value, unit = weight
        quantities.append(
            Quantity(name="body-weight", value=None, unit=unit, absent=weight_absent)
            if weight_absent
            else Quantity(name="body-weight", value=value, unit=unit)
        )
    if with_bmi:
        quantities.append(quantity("bmi", "22.1", "kg/m2"))
    t_value, t_unit = temperature
    t_quantity = (
        Quantity(name="body-temperature", value=None, unit=t_unit, absent=temperature_absent)
        if temperature_absent
        else Quantity(name="body-temperature", value=t_value, unit=t_unit)
    )
    cases = [replace(temperature_reading(), quantities=(t_quantity,))]
    if quantities:
        cases.append(reading(*quantities))
    for r in cases:
        try:
            bundle = mapped(r)
        except NotSendable:
            assert all(q.absent is not None or q.name == "bmi" for q in r.quantities)
            continue
        feeds = check_feed_bundles(bundle)
        sent = {q.name: q for q in r.quantities if q.absent is None and q.name != "bmi"}
        assert len(feeds) == len(sent)
        for o in obs(bundle):
            got = o["valueQuantity"]
            name = "body-weight" if o["meta"]["profile"] == [WEIGHT] else "body-temperature"
            assert got["code"] == ("kg" if name == "body-weight" else "Cel")
            device = sent[name]
            assert device.value is not None
            # exact: back in the device unit at the device's resolution, it is what was read
            assert _back(got["value"], device.unit, device.value) == device.value
            assert "E" not in str(got["value"])


# --------------------------------------------------------------------------- the FHIR server

# Each Mes profile and the R4 core profile it derives from (spec §3, §4.5).
R4_PARENT = {
    WEIGHT: "bodyweight",
    HEIGHT: "bodyheight",
    BP: "bp",
    HEART_RATE: "heartrate",
    TEMPERATURE: "bodytemp",
    OXYGEN_SAT: "oxygensat",
    GLUCOSE: "vitalsigns",
}


def _status(entry: dict[str, Any]) -> str:
    return str(entry["response"]["status"]).split(" ")[0]


def test_every_feed_bundle_is_accepted_by_the_fhir_server(fhir_server: FhirServer) -> None:
    posted = 0
    for name in sorted(SENDABLE):
        for feed in feed_bundles(mapped(SENDABLE[name]())):
            response = fhir_server.post_bundle(feed)
            statuses = [_status(e) for e in response["entry"]]
            assert statuses[-1] == "201", (name, response)
            assert statuses[0] in {"200", "201"}, (name, response)  # Device created or found
            device_location = response["entry"][0]["response"]["location"].split("/_history")[0]
            observation_location = response["entry"][1]["response"]["location"]
            stored = fhir_server.get(observation_location.split("/_history")[0])
            # MES links by id: Device/<bundled id> now names the Device the server holds
            assert stored["device"]["reference"] == device_location
            device = fhir_server.get(device_location)
            sent_device = feed["entry"][0]["resource"]
            assert device["identifier"] == json.loads(dumps(sent_device["identifier"]))
            assert stored["subject"] == {
                "identifier": {"system": PATIENT.system, "value": PATIENT.value}
            }
            posted += 1
    assert posted == 17
    # The ANS canonicals (and PhdDevice) are not in the server's package: stored, not refused.
    skipped = fhir_server.skipped_profiles()
    assert set(skipped) == {PHD_DEVICE, *R4_PARENT}
    # One Device per physical device, however many bundles named it.
    assert len(fhir_server.search("Device")) == 7


def test_a_resent_feed_bundle_finds_its_device(fhir_server: FhirServer) -> None:
    (feed,) = feed_bundles(mapped(temperature_reading()))
    first = fhir_server.post_bundle(feed)
    again = fhir_server.post_bundle(feed)
    assert [_status(e) for e in first["entry"]] == ["201", "201"]
    # No conditional create for the Observation (MES has none): the uplink de-duplicates.
    assert [_status(e) for e in again["entry"]] == ["200", "201"]
    device = first["entry"][0]["response"]["location"].split("/_history")[0]
    for response in (first, again):
        location = response["entry"][1]["response"]["location"].split("/_history")[0]
        assert fhir_server.get(location)["device"]["reference"] == device


def test_observations_also_meet_their_r4_parent_profiles(fhir_server: FhirServer) -> None:
    """Claiming the R4 core parent as well makes the server validate the vital-signs rules
    (slices, fixed units, bindings) that the ANS differentials inherit."""
    for name in sorted(SENDABLE):
        for feed in feed_bundles(mapped(SENDABLE[name]())):
            feed = json.loads(dumps(feed))
            observation = feed["entry"][-1]["resource"]
            (profile,) = observation["meta"]["profile"]
            observation["meta"]["profile"].append(
                "http://hl7.org/fhir/StructureDefinition/" + R4_PARENT[profile]
            )
            response = fhir_server.post_bundle(feed)
            assert _status(response["entry"][-1]) == "201", (name, response)
