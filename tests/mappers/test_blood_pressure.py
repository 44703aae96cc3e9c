"""Blood-pressure monitor readings: one compound BP Observation plus the pulse on its own."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime
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
DAR = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
OBS_ID = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
BP_PROFILE = "http://hl7.org/fhir/StructureDefinition/bp"
HEARTRATE_PROFILE = "http://hl7.org/fhir/StructureDefinition/heartrate"
COMPOUND_PROFILE = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCompoundNumericObservation"
NUMERIC_PROFILE = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdNumericObservation"
DEVICE_TS = "840703356"  # 2026-08-22 08:42:36 in seconds since 2000-01-01

# Written out by hand from IEEE 11073-10101 / R4 vital signs (spec §3): never derived from
# mappers.codes, so that a swapped row there (diastolic <-> heart rate) fails here.
PANEL_CODING = [
    {"system": MDC, "code": "150020", "display": "MDC_PRESS_BLD_NONINV"},
    {
        "system": LOINC,
        "code": "85354-9",
        "display": "Blood pressure panel with all children optional",
    },
]
COMPONENT_CODINGS = {
    "systolic": [
        {"system": MDC, "code": "150021", "display": "MDC_PRESS_BLD_NONINV_SYS"},
        {"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"},
    ],
    "diastolic": [
        {"system": MDC, "code": "150022", "display": "MDC_PRESS_BLD_NONINV_DIA"},
        {"system": LOINC, "code": "8462-4", "display": "Diastolic blood pressure"},
    ],
    "mean-arterial-pressure": [
        {"system": MDC, "code": "150023", "display": "MDC_PRESS_BLD_NONINV_MEAN"},
        {"system": LOINC, "code": "8478-0", "display": "Mean blood pressure"},
    ],
}
PULSE_CODING = [
    {"system": MDC, "code": "149546", "display": "MDC_PULS_RATE_NON_INV"},
    {"system": LOINC, "code": "8867-4", "display": "Heart rate"},
]
BP_SPECIALIZATION = {"system": MDC, "code": "528391", "display": "MDC_DEV_SPEC_PROFILE_BP"}
# Codes that must never show up in the BP panel / in the pulse Observation respectively.
NOT_BP = {"8867-4", "149546", "149530", "147842", "8310-5", "29463-7"}
NOT_PULSE = {"8480-6", "8462-4", "8478-0", "85354-9", "150020", "150021", "150022", "150023"}

BPM = DeviceIdentity(
    address="C4:7C:8D:6A:1F:02",
    system_id="C47C8DFFFE6A1F02",
    manufacturer="ACME Health",
    model="BP-7",
    firmware="1.0.3",
)


def mmhg(name: str, value: str, unit: str = "mm[Hg]") -> Quantity:
    return Quantity(name=name, value=Decimal(value), unit=unit)


def pulse(value: str = "72") -> Quantity:
    return Quantity(name="pulse-rate", value=Decimal(value), unit="/min")


def nan(name: str, unit: str = "mm[Hg]", why: Absent = Absent.NAN) -> Quantity:
    return Quantity(name=name, value=None, unit=unit, absent=why)


def bp_reading(*quantities: Quantity, **kwargs: Any) -> Reading:
    if not quantities:
        quantities = (
            mmhg("systolic", "121"),
            mmhg("diastolic", "79"),
            mmhg("mean-arterial-pressure", "93"),
            pulse(),
        )
    return reading(*quantities, kind="blood-pressure", device=BPM, **kwargs)


def observations(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["resource"] for e in entries if e["resource"]["resourceType"] == "Observation"]


def components(obs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Components keyed by their MDC code."""
    return {c["code"]["coding"][0]["code"]: c for c in obs["component"]}


def check_r4_bp(obs: dict[str, Any]) -> None:
    """What R4 ``bp`` adds to the structural R4B check (slices, units, vital-signs rules)."""
    assert obs["code"]["coding"][1] == PANEL_CODING[1]
    assert any(c["code"] == "vital-signs" for cat in obs["category"] for c in cat["coding"])
    assert "effectiveDateTime" in obs and "subject" in obs
    assert not any(key.startswith("value") for key in obs)
    for loinc in ("8480-6", "8462-4"):
        (slice_,) = [
            c for c in obs["component"] if any(x["code"] == loinc for x in c["code"]["coding"])
        ]
        assert ("valueQuantity" in slice_) != ("dataAbsentReason" in slice_)
    for component in obs["component"]:
        if "valueQuantity" in component:
            quantity = component["valueQuantity"]
            assert (quantity["system"], quantity["code"]) == (UCUM, "mm[Hg]")
            assert isinstance(quantity["value"], Decimal)
        else:
            assert component["dataAbsentReason"]["coding"][0]["system"] == DAR


# --- the code table -------------------------------------------------------------------------------


def test_blood_pressure_table_matches_literal_terminology() -> None:
    term = codes.BLOOD_PRESSURE
    assert [_mdc(term.mdc), _loinc(term.loinc)] == PANEL_CODING
    assert term.profile == BP_PROFILE
    assert term.units == {"mm[Hg]"}
    assert [c.name for c in term.components] == list(COMPONENT_CODINGS)
    for component in term.components:
        assert component.loinc is not None
        assert [_mdc(component.mdc), _loinc(component.loinc)] == COMPONENT_CODINGS[component.name]
    assert [c.required for c in term.components] == [True, True, False]
    (pulse_term,) = codes.BP_PULSE_QUANTITIES.values()
    assert pulse_term.loinc is not None
    assert [_mdc(pulse_term.mdc), _loinc(pulse_term.loinc)] == PULSE_CODING
    assert (pulse_term.name, pulse_term.profile, pulse_term.units) == (
        "pulse-rate",
        HEARTRATE_PROFILE,
        frozenset({"/min"}),
    )
    kind = codes.kind_term("blood-pressure")
    assert kind.compound is term
    assert _mdc(kind.specialization) == BP_SPECIALIZATION
    assert kind.specialization.code == 8 * 65536 + 4103
    assert not kind.sites


def test_mdc_codes_are_partition_2_terms() -> None:
    assert codes.BLOOD_PRESSURE.mdc.code == 2 * 65536 + 18948
    assert codes.BP_PULSE_QUANTITIES["pulse-rate"].mdc.code == 2 * 65536 + 18474
    assert [c.mdc.code for c in codes.BLOOD_PRESSURE.components] == [150021, 150022, 150023]


def _mdc(term: codes.Mdc) -> dict[str, str]:
    return {"system": MDC, "code": str(term.code), "display": term.ref_id}


def _loinc(term: codes.Loinc) -> dict[str, str]:
    return {"system": LOINC, "code": term.code, "display": term.display}


# --- a complete reading ---------------------------------------------------------------------------


def test_bp_reading_gives_devices_panel_then_pulse_all_valid() -> None:
    entries = map_reading(bp_reading(), PATIENT, GATEWAY)
    bundle = validate_entries(entries)
    assert len(bundle.entry) == 4
    assert [e["resource"]["meta"]["profile"] for e in entries[2:]] == [
        [BP_PROFILE, COMPOUND_PROFILE],
        [HEARTRATE_PROFILE, NUMERIC_PROFILE],
    ]
    device = entries[1]["resource"]
    assert device["specialization"][0]["systemType"]["coding"] == [BP_SPECIALIZATION]
    validate_entries(transaction_bundle(entries)["entry"])


def test_panel_codes_components_and_exact_values() -> None:
    panel, _ = observations(map_reading(bp_reading(), PATIENT, GATEWAY))
    check_r4_bp(panel)
    assert panel["code"]["coding"] == PANEL_CODING
    assert "dataAbsentReason" not in panel
    expected = {"systolic": "121", "diastolic": "79", "mean-arterial-pressure": "93"}
    assert len(panel["component"]) == 3
    for component, (name, value) in zip(panel["component"], expected.items(), strict=True):
        assert component["code"]["coding"] == COMPONENT_CODINGS[name]
        assert component["valueQuantity"] == {
            "value": Decimal(value),
            "unit": "mmHg",
            "system": UCUM,
            "code": "mm[Hg]",
        }
        assert str(component["valueQuantity"]["value"]) == value


def test_diastolic_and_heart_rate_are_not_mixed_up() -> None:
    panel, heart = observations(map_reading(bp_reading(), PATIENT, GATEWAY))
    panel_codes = {c["code"] for c in panel["code"]["coding"]} | {
        x["code"] for c in panel["component"] for x in c["code"]["coding"]
    }
    heart_codes = {c["code"] for c in heart["code"]["coding"]}
    assert not panel_codes & NOT_BP
    assert not heart_codes & NOT_PULSE
    diastolic = components(panel)["150022"]
    assert [c["code"] for c in diastolic["code"]["coding"]] == ["150022", "8462-4"]
    assert str(diastolic["valueQuantity"]["value"]) == "79"


def test_pulse_is_its_own_numeric_observation() -> None:
    entries = map_reading(bp_reading(), PATIENT, GATEWAY)
    heart = entries[3]["resource"]
    assert heart["code"]["coding"] == PULSE_CODING
    assert heart["valueQuantity"] == {
        "value": Decimal("72"),
        "unit": "/min",
        "system": UCUM,
        "code": "/min",
    }
    assert "component" not in heart
    assert heart["identifier"][0]["value"].endswith(f"-149546-{DEVICE_TS}")
    assert heart["device"] == {"reference": entries[1]["fullUrl"]}
    assert heart["effectiveDateTime"] == entries[2]["resource"]["effectiveDateTime"]


def test_identifiers_use_the_observations_own_codes() -> None:
    r = bp_reading()
    entries = map_reading(r, PATIENT, GATEWAY)
    panel, heart = observations(entries)
    prefix = "C47C8DFFFE6A1F02-2800175123456-urn:oid:1.2.250.1.213.1.4.8"
    assert panel["identifier"] == [{"system": OBS_ID, "value": f"{prefix}-150020-{DEVICE_TS}"}]
    assert panel["identifier"][0]["value"] == observation_identifier(r, PATIENT, 150020)
    assert heart["identifier"][0]["value"] == observation_identifier(r, PATIENT, 149546)
    assert entries[2]["request"]["ifNoneExist"] == (
        f"identifier={OBS_ID}|C47C8DFFFE6A1F02-2800175123456-urn%3Aoid%3A1.2.250.1.213.1.4.8"
        f"-150020-{DEVICE_TS}"
    )
    assert primary_observation_code(r) == 150020
    # pulse first in the reading: still keyed on the panel
    assert primary_observation_code(bp_reading(pulse(), *bp_reading().quantities[:3])) == 150020


def test_components_follow_table_order_whatever_the_reading_order() -> None:
    base = map_reading(bp_reading(), PATIENT, GATEWAY)
    shuffled = bp_reading(
        pulse(),
        mmhg("mean-arterial-pressure", "93"),
        mmhg("diastolic", "79"),
        mmhg("systolic", "121"),
    )
    assert map_reading(shuffled, PATIENT, GATEWAY) == base


@pytest.mark.parametrize(
    ("value", "text"),
    [("120", "120"), ("120.5", "120.5"), ("80.0", "80.0"), ("1.2E+2", "120"), ("0.75", "0.75")],
)
def test_component_values_are_exact_decimals(value: str, text: str) -> None:
    r = bp_reading(mmhg("systolic", value), mmhg("diastolic", "80"))
    panel = observations(map_reading(r, PATIENT, GATEWAY))[0]
    got = components(panel)["150021"]["valueQuantity"]["value"]
    assert isinstance(got, Decimal)
    assert str(got) == text
    assert got == Decimal(value)


# --- special values -------------------------------------------------------------------------------


def test_nan_mean_arterial_pressure_keeps_its_component_with_data_absent_reason() -> None:
    r = bp_reading(
        mmhg("systolic", "121"), mmhg("diastolic", "79"), nan("mean-arterial-pressure"), pulse()
    )
    entries = map_reading(r, PATIENT, GATEWAY)
    validate_entries(entries)
    panel = entries[2]["resource"]
    check_r4_bp(panel)
    mean = components(panel)["150023"]
    assert mean == {
        "code": {"coding": COMPONENT_CODINGS["mean-arterial-pressure"]},
        "dataAbsentReason": {
            "coding": [{"system": DAR, "code": "not-a-number", "display": "Not a Number (NaN)"}]
        },
    }
    assert "valueQuantity" in components(panel)["150021"]
    assert "dataAbsentReason" not in panel  # the measurement as a whole is fine
    assert panel["status"] == "final"


@pytest.mark.parametrize("name", ["systolic", "diastolic"])
def test_nan_required_component_is_kept_with_data_absent_reason(name: str) -> None:
    values = {"systolic": "121", "diastolic": "79", "mean-arterial-pressure": "93"}
    quantities = [nan(n) if n == name else mmhg(n, v) for n, v in values.items()]
    entries = map_reading(bp_reading(*quantities), PATIENT, GATEWAY)
    validate_entries(entries)
    panel = entries[2]["resource"]
    check_r4_bp(panel)
    assert len(panel["component"]) == 3
    code = "150021" if name == "systolic" else "150022"
    assert components(panel)[code]["dataAbsentReason"]["coding"][0]["code"] == "not-a-number"
    assert "valueQuantity" not in components(panel)[code]
    assert "dataAbsentReason" not in panel


@pytest.mark.parametrize(
    ("whys", "overall"),
    [
        ((Absent.NAN, Absent.NAN, Absent.NAN), "not-a-number"),
        ((Absent.UNSUCCESSFUL, Absent.NRES, Absent.RESERVED), "error"),
        ((Absent.POSITIVE_INFINITY, Absent.POSITIVE_INFINITY, None), "positive-infinity"),
        ((Absent.NAN, Absent.NEGATIVE_INFINITY, Absent.NAN), "error"),
    ],
)
def test_wholly_failed_measurement(whys: tuple[Absent, ...], overall: str) -> None:
    names = ["systolic", "diastolic", "mean-arterial-pressure"]
    quantities = [nan(n, why=why) for n, why in zip(names, whys, strict=True) if why is not None]
    entries = map_reading(bp_reading(*quantities, pulse()), PATIENT, GATEWAY)
    validate_entries(entries)
    panel = entries[2]["resource"]
    check_r4_bp(panel)
    assert panel["dataAbsentReason"]["coding"][0]["code"] == overall
    assert panel["dataAbsentReason"]["coding"][0]["system"] == DAR
    assert len(panel["component"]) == len(quantities)  # every component kept, each with a reason
    for component, why in zip(panel["component"], whys, strict=False):
        assert (
            component["dataAbsentReason"]["coding"][0]["code"]
            == (codes.DATA_ABSENT_REASONS[why][0])
        )
    # the pulse is unaffected
    assert str(entries[3]["resource"]["valueQuantity"]["value"]) == "72"


def test_absent_pulse_next_to_a_valid_panel() -> None:
    absent_pulse = Quantity(name="pulse-rate", value=None, unit="/min", absent=Absent.NRES)
    r = bp_reading(mmhg("systolic", "121"), mmhg("diastolic", "79"), absent_pulse)
    entries = map_reading(r, PATIENT, GATEWAY)
    validate_entries(entries)
    heart = entries[3]["resource"]
    assert "valueQuantity" not in heart
    assert heart["dataAbsentReason"]["coding"][0]["code"] == "error"
    assert len(entries[2]["resource"]["component"]) == 2  # no MAP reported, no MAP component


def test_reading_without_pulse_gives_the_panel_only() -> None:
    entries = map_reading(
        bp_reading(mmhg("systolic", "121"), mmhg("diastolic", "79")), PATIENT, GATEWAY
    )
    validate_entries(entries)
    assert len(entries) == 3
    check_r4_bp(entries[2]["resource"])


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantities", "why"),
    [
        ((mmhg("systolic", "16.1", "kPa"), mmhg("diastolic", "10.5", "kPa")), "kPa"),
        ((mmhg("systolic", "121"), mmhg("diastolic", "10.5", "kPa")), "mixed kPa"),
        (
            (
                mmhg("systolic", "121"),
                mmhg("diastolic", "79"),
                nan("mean-arterial-pressure", "kPa"),
            ),
            "kPa on an absent component",
        ),
        (
            (
                mmhg("systolic", "121"),
                mmhg("diastolic", "79"),
                mmhg("mean-arterial-pressure", "93", "mmHg"),
            ),
            "non-UCUM unit",
        ),
        ((mmhg("systolic", "121"), pulse()), "no diastolic"),
        ((mmhg("diastolic", "79"), pulse()), "no systolic"),
        ((pulse(),), "pulse only"),
        ((mmhg("systolic", "121"), mmhg("diastolic", "79"), mmhg("systolic", "122")), "duplicate"),
        (
            (
                mmhg("systolic", "121"),
                mmhg("diastolic", "79"),
                Quantity(name="pulse-rate", value=Decimal("72"), unit="Hz"),
            ),
            "pulse unit",
        ),
        (
            (
                mmhg("systolic", "121"),
                mmhg("diastolic", "79"),
                Quantity(name="body-weight", value=Decimal("65.7"), unit="kg"),
            ),
            "weight in a BP",
        ),
        (
            (
                mmhg("systolic", "121"),
                mmhg("diastolic", "79"),
                Quantity(name="heart-rate", value=Decimal("72"), unit="/min"),
            ),
            "unknown name",
        ),
        ((mmhg("systolic", "NaN"), mmhg("diastolic", "79")), "NaN decimal"),
        (
            (Quantity(name="systolic", value=None, unit="mm[Hg]"), mmhg("diastolic", "79")),
            "neither value nor absent",
        ),
    ],
)
def test_unmappable_bp_readings_raise_mapping_error(
    quantities: tuple[Quantity, ...], why: str
) -> None:
    with pytest.raises(MappingError) as caught:
        map_reading(bp_reading(*quantities), PATIENT, GATEWAY)
    message = str(caught.value)
    assert PATIENT.value not in message, why
    assert "121" not in message and "16.1" not in message, why


def test_site_is_refused_for_blood_pressure() -> None:
    with pytest.raises(MappingError):
        map_reading(replace(bp_reading(), site="armpit"), PATIENT, GATEWAY)


def test_weight_kind_does_not_accept_bp_quantities() -> None:
    with pytest.raises(MappingError):
        map_reading(reading(mmhg("systolic", "121")), PATIENT, GATEWAY)


# --- determinism and bundles ----------------------------------------------------------------------


def test_retries_are_byte_identical() -> None:
    first = json.dumps(transaction_bundle(map_reading(bp_reading(), PATIENT, GATEWAY)), default=str)
    second = json.dumps(
        transaction_bundle(map_reading(bp_reading(), PATIENT, GATEWAY)), default=str
    )
    assert first == second


def test_output_is_fresh_per_call() -> None:
    first = map_reading(bp_reading(), PATIENT, GATEWAY)
    pristine = copy.deepcopy(first)
    first[2]["resource"]["component"][0]["code"]["coding"][0]["code"] = "tampered"
    first[3]["resource"]["valueQuantity"]["value"] = Decimal(0)
    assert map_reading(bp_reading(), PATIENT, GATEWAY) == pristine


def test_two_bp_readings_share_devices_in_one_bundle() -> None:
    later = bp_reading(device_time=datetime(2026, 8, 22, 20, 0, 0))
    entries = map_reading(bp_reading(), PATIENT, GATEWAY) + map_reading(later, PATIENT, GATEWAY)
    bundle = transaction_bundle(entries)
    assert len(bundle["entry"]) == 6
    validate_entries(bundle["entry"])


@pytest.mark.parametrize(
    "breakage",
    [
        lambda panel: panel["component"][0]["valueQuantity"].update(value="high"),
        lambda panel: panel["component"][1].update(valueBoolean="maybe"),
        lambda panel: panel["component"][0].pop("code"),
    ],
)
def test_the_r4b_check_is_not_vacuous(breakage: Any) -> None:
    entries = copy.deepcopy(map_reading(bp_reading(), PATIENT, GATEWAY))
    breakage(entries[2]["resource"])
    with pytest.raises(ValueError):
        validate_entries(entries)


# --- property -------------------------------------------------------------------------------------

BP_NAMES = ["systolic", "diastolic", "mean-arterial-pressure"]
EXPECTED_CODE = {"systolic": "150021", "diastolic": "150022", "mean-arterial-pressure": "150023"}


@st.composite
def bp_quantities(draw: st.DrawFn) -> tuple[Quantity, ...]:
    names = [*BP_NAMES[:2]]
    if draw(st.booleans()):
        names.append(BP_NAMES[2])
    if draw(st.booleans()):
        names.append("pulse-rate")
    out = []
    for name in names:
        why = draw(st.none() | st.sampled_from(list(Absent)))
        value = None if why is not None else draw(measured)
        unit = "/min" if name == "pulse-rate" else "mm[Hg]"
        out.append(Quantity(name=name, value=value, unit=unit, absent=why))
    return tuple(draw(st.permutations(out)))


@st.composite
def bp_readings(draw: st.DrawFn) -> Reading:
    device = DeviceIdentity(address=draw(mac), system_id=draw(st.none() | hex_string(16)))
    received = draw(naive_times).replace(tzinfo=UTC)
    device_time = draw(st.none() | naive_times.map(lambda t: t.replace(microsecond=0)))
    if device_time is None:
        effective, source = received, TimeSource.GATEWAY_RECEIPT
    else:
        effective, source = device_time.replace(tzinfo=draw(offsets)), TimeSource.DEVICE_LOCAL
    return Reading(
        kind="blood-pressure",
        characteristic="2A35",
        device=device,
        quantities=draw(bp_quantities()),
        device_time=device_time,
        effective_time=effective,
        time_source=source,
        received_at=received,
        user_index=draw(st.none() | st.integers(0, 255)),
        raw="00",
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(r=bp_readings(), patient=patients, gateway=gateways)
def test_every_bp_reading_maps_to_valid_consistent_fhir(
    r: Reading, patient: PatientRef, gateway: Any
) -> None:
    entries = map_reading(r, patient, gateway)
    validate_entries(entries)
    assert map_reading(r, patient, gateway) == entries  # deterministic
    json.dumps(entries, default=str)
    urls = [e["fullUrl"] for e in entries]
    assert len(set(urls)) == len(urls)
    for entry in entries:
        for ref in collect_references(entry["resource"]):
            assert ref in urls

    by_name = {q.name: q for q in r.quantities}
    has_pulse = "pulse-rate" in by_name
    assert len(entries) == 3 + has_pulse
    panel = entries[2]["resource"]
    check_r4_bp(panel)
    assert panel["code"]["coding"] == PANEL_CODING
    assert panel["identifier"][0]["value"] == observation_identifier(r, patient, 150020)
    reported = [n for n in BP_NAMES if n in by_name]
    assert [c["code"]["coding"][0]["code"] for c in panel["component"]] == [
        EXPECTED_CODE[n] for n in reported
    ]
    for name, component in zip(reported, panel["component"], strict=True):
        assert component["code"]["coding"] == COMPONENT_CODINGS[name]
        _check_value(by_name[name], component)
    all_absent = all(by_name[n].absent is not None for n in reported)
    assert ("dataAbsentReason" in panel) == all_absent

    if has_pulse:
        heart = entries[3]["resource"]
        assert heart["code"]["coding"] == PULSE_CODING
        assert heart["identifier"][0]["value"] == observation_identifier(r, patient, 149546)
        _check_value(by_name["pulse-rate"], heart)


def _check_value(quantity: Quantity, element: dict[str, Any]) -> None:
    if quantity.absent is not None:
        assert "valueQuantity" not in element
        assert (
            element["dataAbsentReason"]["coding"][0]["code"]
            == (codes.DATA_ABSENT_REASONS[quantity.absent][0])
        )
        return
    assert quantity.value is not None
    value = element["valueQuantity"]["value"]
    assert isinstance(value, Decimal)
    assert value == quantity.value  # exact, no float anywhere
    assert element["valueQuantity"]["code"] == quantity.unit
    exponent: Any = quantity.value.as_tuple().exponent
    if exponent <= 0:
        assert str(value) == str(quantity.value)  # digit for digit
