"""``Reading.status``: measurement-status conditions and the BITS Observation of each kind."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.models import Absent, Quantity, Reading, TimeSource
from mappers import codes
from mappers.errors import MappingError
from mappers.phd import map_reading, transaction_bundle
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
ASN1 = "http://terminology.hl7.org/CodeSystem/ASN1ToHL7"
POCD = "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status"
DAR = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
OBS_ID = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
BITS = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBitsEnumerationObservation"
HTEST = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "HTEST",
    "display": "test health data",
}
DEVICE_TS = "840703356"
PREFIX = "74E8FFFEFF051C00-2800175123456-urn:oid:1.2.250.1.213.1.4.8"


def bp(*status: str, **kwargs: Any) -> Reading:
    r = reading(
        quantity("systolic", "121", "mm[Hg]"),
        quantity("diastolic", "79", "mm[Hg]"),
        quantity("mean-arterial-pressure", "93", "mm[Hg]"),
        quantity("pulse-rate", "72", "/min"),
        kind="blood-pressure",
        **kwargs,
    )
    return replace(r, status=status)


def meter(*status: str, **kwargs: Any) -> Reading:
    r = reading(quantity("glucose", "98", "mg/dL"), kind="blood-glucose", **kwargs)
    return replace(r, status=status)


def sample(kind: str, *status: str) -> Reading:
    """One plausible reading of ``kind`` with ``status``."""
    quantities = {
        "blood-pressure": bp().quantities,
        "blood-glucose": (quantity("glucose", "98", "mg/dL"),),
        "cgm": (quantity("glucose", "112", "mg/dL"),),
        "spo2": (quantity("spo2", "97", "%"), quantity("pulse-rate", "64", "/min")),
    }[kind]
    return replace(reading(*quantities, kind=kind), status=status)


def bits_of(entries: list[dict[str, Any]]) -> dict[str, Any]:
    (entry,) = by_profile(entries, "PhdBitsEnumerationObservation")
    resource: dict[str, Any] = entry["resource"]
    return resource


# Hand-written: kind -> (BITS type, {status name: expected component code})
EXPECTED_CODES = {
    "blood-pressure": (
        "8410608",
        {
            "body-movement": "8410608.0",
            "cuff-too-loose": "8410608.1",
            "irregular-pulse": "8410608.2",
            "pulse-rate-above-range": "8410608.3",
            "pulse-rate-below-range": "8410608.4",
            "improper-position": "8410608.5",
        },
    ),
    "blood-glucose": (
        "8417752",
        {
            "device-battery-low": "8417752.0",
            "sensor-malfunction": "8417752.1",
            "sample-size-insufficient": "8417752.2",
            "strip-insertion-error": "8417752.3",
            "strip-type-incorrect": "8417752.4",
            "result-too-high": "8417752.5",
            "result-too-low": "8417752.6",
            "sensor-temperature-too-high": "8417752.7",
            "sensor-temperature-too-low": "8417752.8",
            "read-interrupted": "8417752.9",
            "general-device-fault": "8417752.10",
        },
    ),
    "cgm": (
        "8418060",
        {
            "session-stopped": "8418060.0",
            "sensor-malfunction": "8418060.3",
            "calibration-required": "8418060.9",
            "result-below-hypo": "8418060.14",
            "communication-out-of-range": "8418060.20",
        },
    ),
    "spo2": (
        "150604",
        {
            "sensor-disconnected": "150604.0",
            "signal-pulse-questionable": "150604.7",
            "device-extended-update": "150604.15",
        },
    ),
}
CASES = [
    (kind, name, code)
    for kind, (_, table) in EXPECTED_CODES.items()
    for name, code in table.items()
]


# --- BITS Observation -----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name", "code"), CASES)
def test_bit_code_construction(kind: str, name: str, code: str) -> None:
    entries = map_reading(sample(kind, name), PATIENT, GATEWAY)
    validate_entries(entries)
    bits = bits_of(entries)
    assert bits["component"] == [
        {
            "code": {
                "coding": [
                    {
                        "system": ASN1,
                        "code": code,
                        "display": codes.kind_term(kind).status.bits[name].asn1_name,  # type: ignore[union-attr]
                    }
                ]
            },
            "valueBoolean": True,
        }
    ]
    type_code = EXPECTED_CODES[kind][0]
    assert bits["code"]["coding"][0]["code"] == type_code
    assert bits["identifier"][0]["value"].endswith(f"-{type_code}-{DEVICE_TS}")


def test_blood_pressure_bits_observation_shape() -> None:
    r = bp("irregular-pulse", "body-movement", "improper-position", "irregular-pulse")
    entries = map_reading(r, PATIENT, GATEWAY)
    validate_entries(entries)
    validate_entries(transaction_bundle(entries)["entry"])
    assert len(entries) == 5
    panel, pulse, bits_entry = entries[2], entries[3], entries[4]
    bits = bits_entry["resource"]
    assert bits["meta"] == {"profile": [BITS]}
    assert bits["category"] == [
        {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories",
                    "code": "phd",
                }
            ]
        }
    ]
    assert bits["code"]["coding"] == [
        {"system": MDC, "code": "8410608", "display": "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS"}
    ]
    assert bits["status"] == "final"
    assert bits["subject"] == panel["resource"]["subject"]  # the patient
    assert bits["effectiveDateTime"] == panel["resource"]["effectiveDateTime"]
    assert bits["device"] == {"reference": entries[1]["fullUrl"]}
    assert bits["derivedFrom"] == [
        {"reference": panel["fullUrl"]},
        {"reference": pulse["fullUrl"]},
    ]
    assert not [key for key in bits if key.startswith("value")]  # no value[x]
    # one component per set bit, in bit order, whatever the order (and repeats) of the names
    assert [c["code"]["coding"][0]["code"] for c in bits["component"]] == [
        "8410608.0",
        "8410608.2",
        "8410608.5",
    ]
    assert [c["code"]["coding"][0]["display"] for c in bits["component"]] == [
        "body-movement",
        "irregular-pulse",
        "improper-body-position",
    ]
    assert all(c["valueBoolean"] is True for c in bits["component"])
    assert bits["identifier"] == [{"system": OBS_ID, "value": f"{PREFIX}-8410608-{DEVICE_TS}"}]
    assert bits_entry["request"]["ifNoneExist"] == (
        f"identifier={OBS_ID}|74E8FFFEFF051C00-2800175123456-urn%3Aoid%3A1.2.250.1.213.1.4.8"
        f"-8410608-{DEVICE_TS}"
    )
    # the measurements themselves are untouched by bits
    plain = map_reading(bp(), PATIENT, GATEWAY)
    assert entries[:4] == plain
    assert (
        map_reading(bp("improper-position", "body-movement", "irregular-pulse"), PATIENT, GATEWAY)
        == entries
    )


def test_bits_retries_are_byte_identical_and_references_resolve() -> None:
    r = bp("cuff-too-loose")
    first = json.dumps(transaction_bundle(map_reading(r, PATIENT, GATEWAY)), default=str)
    assert json.dumps(transaction_bundle(map_reading(r, PATIENT, GATEWAY)), default=str) == first
    entries = map_reading(r, PATIENT, GATEWAY)
    urls = {e["fullUrl"] for e in entries}
    for item in entries:
        for ref in collect_references(item["resource"]):
            assert ref in urls


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda: bp("cuff-too-tight"), ["cuff-too-tight"]),
        (
            lambda: bp("strip-type-incorrect", "zzz", "body-movement"),
            ["strip-type-incorrect", "zzz"],
        ),
        (lambda: meter("body-movement"), ["body-movement"]),
        (lambda: sample("cgm", "device-battery-low"), ["device-battery-low"]),
        (lambda: sample("cgm", "time-fault"), ["time-fault"]),
        (lambda: sample("spo2", "sensor-session-stopped"), ["sensor-session-stopped"]),
        (lambda: replace(reading(), status=("irregular-pulse",)), ["irregular-pulse"]),
        (lambda: replace(reading(), status=("",)), ["''"]),
    ],
)
def test_unknown_status_names_are_refused_by_name(make: Any, names: list[str]) -> None:
    with pytest.raises(MappingError) as caught:
        map_reading(make(), PATIENT, GATEWAY)
    for name in names:
        assert name in str(caught.value)


# --- time fault (glucose) -------------------------------------------------------------------------


@pytest.mark.parametrize("source", [TimeSource.DEVICE_LOCAL, TimeSource.DEVICE_UTC])
def test_time_fault_on_a_device_timed_record_is_refused(source: TimeSource) -> None:
    r = replace(meter("time-fault"), time_source=source)
    with pytest.raises(MappingError, match="time-fault"):
        map_reading(r, PATIENT, GATEWAY)


def test_time_fault_is_dropped_when_the_device_clock_is_not_used() -> None:
    received = datetime(2026, 8, 22, 6, 43, 1, tzinfo=UTC)
    r = meter(
        "time-fault",
        "device-battery-low",
        effective_time=received,
        time_source=TimeSource.GATEWAY_RECEIPT,
        received_at=received,
    )
    entries = map_reading(r, PATIENT, GATEWAY)
    validate_entries(entries)
    assert [c["code"]["coding"][0]["code"] for c in bits_of(entries)["component"]] == ["8417752.0"]
    only_fault = map_reading(replace(r, status=("time-fault",)), PATIENT, GATEWAY)
    assert by_profile(only_fault, "PhdBitsEnumerationObservation") == []
    assert only_fault == map_reading(replace(r, status=()), PATIENT, GATEWAY)


# --- conditions -----------------------------------------------------------------------------------


def test_invalid_measurement_on_a_numeric() -> None:
    entries = map_reading(replace(reading(), status=("invalid-measurement",)), PATIENT, GATEWAY)
    validate_entries(entries)
    (obs,) = observations(entries)
    assert obs["status"] == "entered-in-error"
    assert "valueQuantity" not in obs
    assert obs["dataAbsentReason"] == {
        "coding": [{"system": DAR, "code": "error", "display": "Error"}]
    }
    assert list(obs) == [
        "resourceType",
        "meta",
        "extension",
        "identifier",
        "status",
        "category",
        "code",
        "subject",
        "effectiveDateTime",
        "dataAbsentReason",
        "device",
    ]
    # the identifier does not change: a later valid copy of the record is the same record
    plain = observations(map_reading(reading(), PATIENT, GATEWAY))[0]
    assert obs["identifier"] == plain["identifier"]


def test_invalid_measurement_on_the_blood_pressure_panel() -> None:
    entries = map_reading(bp("invalid-measurement"), PATIENT, GATEWAY)
    validate_entries(entries)
    panel, pulse = observations(entries)
    for obs in (panel, pulse):
        assert obs["status"] == "entered-in-error"
        assert obs["dataAbsentReason"]["coding"][0]["code"] == "error"
        assert "valueQuantity" not in obs
    assert len(panel["component"]) == 3  # R4 bp still needs systolic and diastolic
    for component in panel["component"]:
        assert "valueQuantity" not in component
        assert component["dataAbsentReason"]["coding"][0]["code"] == "error"


def test_measurement_unavailable() -> None:
    entries = map_reading(sample("spo2", "measurement-unavailable"), PATIENT, GATEWAY)
    validate_entries(entries)
    for obs in observations(entries):
        assert obs["status"] == "final"
        assert obs["dataAbsentReason"] == {
            "coding": [{"system": DAR, "code": "not-performed", "display": "Not Performed"}]
        }
        assert "valueQuantity" not in obs


def test_status_reason_wins_over_a_special_value() -> None:
    q = Quantity(name="body-weight", value=None, unit="kg", absent=Absent.NAN)
    r = replace(reading(q), status=("measurement-unavailable",))
    (obs,) = observations(map_reading(r, PATIENT, GATEWAY))
    assert obs["dataAbsentReason"]["coding"][0]["code"] == "not-performed"


@pytest.mark.parametrize(
    ("names", "status", "interpretations", "absent"),
    [
        (("questionable-measurement",), "final", [("questionable", "Questionable")], None),
        (("calibration-ongoing",), "final", [("calibration-ongoing", "Calibration ongoing")], None),
        (("early-estimate",), "preliminary", [("early-indication", "Early indication")], None),
        (
            ("early-estimate", "questionable-measurement"),
            "preliminary",
            [("questionable", "Questionable"), ("early-indication", "Early indication")],
            None,
        ),
        (
            ("early-estimate", "invalid-measurement"),
            "entered-in-error",
            [("early-indication", "Early indication")],
            "error",
        ),
        (("measurement-unavailable", "invalid-measurement"), "entered-in-error", [], "error"),
    ],
)
def test_condition_combinations(
    names: tuple[str, ...],
    status: str,
    interpretations: list[tuple[str, str]],
    absent: str | None,
) -> None:
    for order in (names, tuple(reversed(names))):
        entries = map_reading(meter(*order), PATIENT, GATEWAY)
        validate_entries(entries)
        (obs,) = observations(entries)
        assert obs["status"] == status
        got = [
            (i["coding"][0]["code"], i["coding"][0]["display"])
            for i in obs.get("interpretation", [])
        ]
        assert got == interpretations
        for i in obs.get("interpretation", []):
            assert i["coding"][0]["system"] == POCD
        if absent is None:
            assert str(obs["valueQuantity"]["value"]) == "98"
        else:
            assert obs["dataAbsentReason"]["coding"][0]["code"] == absent
            assert "valueQuantity" not in obs


@pytest.mark.parametrize("name", ["demonstration-data", "testing-data"])
def test_test_data_is_labelled_htest_on_every_patient_observation(name: str) -> None:
    r = replace(
        meter(name, "strip-insertion-error"),
        context=(("meal", "casual"),),
        battery=40,
    )
    entries = map_reading(r, PATIENT, GATEWAY)
    validate_entries(entries)
    patient_obs = [o for o in observations(entries) if "identifier" in o["subject"]]
    assert len(patient_obs) == 3  # glucose, meal context, bits
    for obs in patient_obs:
        assert obs["meta"]["security"] == [HTEST]
        assert obs["status"] == "final"
    battery = [o for o in observations(entries) if "reference" in o["subject"]]
    assert battery and all("security" not in o["meta"] for o in battery)


def test_conditions_apply_to_every_measurement_not_to_the_bits() -> None:
    entries = map_reading(bp("questionable-measurement", "body-movement"), PATIENT, GATEWAY)
    validate_entries(entries)
    panel, pulse, bits = observations(entries)
    assert panel["interpretation"] == pulse["interpretation"]
    assert "interpretation" not in bits
    assert bits["status"] == "final"


# --- property -------------------------------------------------------------------------------------

ALL_NAMES = {
    kind: sorted(codes.CONDITIONS) + sorted(codes.kind_term(kind).status.bits)  # type: ignore[union-attr]
    for kind in EXPECTED_CODES
}


@st.composite
def statused(draw: st.DrawFn) -> Reading:
    kind = draw(st.sampled_from(sorted(ALL_NAMES)))
    names = draw(st.lists(st.sampled_from(ALL_NAMES[kind]), max_size=8))
    return sample(kind, *names)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(r=statused())
def test_any_status_combination_maps_to_valid_deterministic_fhir(r: Reading) -> None:
    entries = map_reading(r, PATIENT, GATEWAY)
    validate_entries(entries)
    assert map_reading(r, PATIENT, GATEWAY) == entries
    term = codes.kind_term(r.kind).status
    assert term is not None
    set_bits = sorted({term.bits[n].bit for n in r.status if n in term.bits})
    found = by_profile(entries, "PhdBitsEnumerationObservation")
    if not set_bits:
        assert found == []
        return
    (bits,) = found
    assert [c["code"]["coding"][0]["code"] for c in bits["resource"]["component"]] == [
        f"{term.mdc.code}.{bit}" for bit in set_bits
    ]
    for obs in observations(entries):
        if "valueQuantity" in obs:
            assert isinstance(obs["valueQuantity"]["value"], Decimal)
