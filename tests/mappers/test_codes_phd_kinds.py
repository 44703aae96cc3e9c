"""The glucose / CGM / SpO2 / body-composition / status / device-status tables, checked against
literal copies written out by hand from their sources (never derived from mappers.codes).

Sources: IEEE 11073-10101 term codes as partition::term (20601 nomenclature headers), the PHD IG
(HL7/phd CodeSystem.ASN1ToHL7.fsh, examples), R4 vital signs, LOINC as used by gematik HDDT and
the HL7 CGM IG. Each MDC code is also checked as ``partition * 65536 + term``.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from mappers import codes

ContextRow = tuple[int, str, int, dict[str, tuple[int, str, int] | None]]
# (MDC, ref id, partition::term, LOINC codes in order, R4 profile id | None, units)
QuantityRow = tuple[int, str, int, list[tuple[str, str]], str | None, set[str]]

MDC_PART = {"SCADA": 2, "OBJ": 1, "INFRA": 8, "PHD_DM": 128}


def mdc(partition: str, term: int) -> int:
    return MDC_PART[partition] * 65536 + term


# specimen -> (MDC code, ref id, partition::term, LOINC mg/dL, LOINC mmol/L)
GLUCOSE_SPECIMENS = {
    "capillary-whole-blood": (
        160184,
        "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD",
        29112,
        ("41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer"),
        ("14743-9", "Glucose [Moles/volume] in Capillary blood by Glucometer"),
    ),
    "capillary-plasma": (
        160188,
        "MDC_CONC_GLU_CAPILLARY_PLASMA",
        29116,
        ("41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer"),
        ("14743-9", "Glucose [Moles/volume] in Capillary blood by Glucometer"),
    ),
    "venous-whole-blood": (
        160192,
        "MDC_CONC_GLU_VENOUS_WHOLEBLOOD",
        29120,
        ("2339-0", "Glucose [Mass/volume] in Blood"),
        ("15074-8", "Glucose [Moles/volume] in Blood"),
    ),
    "venous-plasma": (
        160196,
        "MDC_CONC_GLU_VENOUS_PLASMA",
        29124,
        ("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
        ("14749-6", "Glucose [Moles/volume] in Serum or Plasma"),
    ),
    "arterial-whole-blood": (
        160200,
        "MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD",
        29128,
        ("2339-0", "Glucose [Mass/volume] in Blood"),
        ("15074-8", "Glucose [Moles/volume] in Blood"),
    ),
    "arterial-plasma": (
        160204,
        "MDC_CONC_GLU_ARTERIAL_PLASMA",
        29132,
        ("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
        ("14749-6", "Glucose [Moles/volume] in Serum or Plasma"),
    ),
    "undetermined-whole-blood": (
        160364,
        "MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD",
        29292,
        ("2339-0", "Glucose [Mass/volume] in Blood"),
        ("15074-8", "Glucose [Moles/volume] in Blood"),
    ),
    "undetermined-plasma": (
        160368,
        "MDC_CONC_GLU_UNDETERMINED_PLASMA",
        29296,
        ("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
        ("14749-6", "Glucose [Moles/volume] in Serum or Plasma"),
    ),
    "interstitial-fluid": (
        160212,
        "MDC_CONC_GLU_ISF",
        29140,
        ("99504-3", "Glucose [Mass/volume] in Interstitial fluid"),
        ("105272-9", "Glucose [Moles/volume] in Interstitial fluid"),
    ),
}

# key -> (code, ref id, term, {value: (code, ref id, term) | None})
GLUCOSE_CONTEXTS: dict[str, ContextRow] = {
    "meal": (
        8417864,
        "MDC_CTXT_GLU_MEAL",
        29256,
        {
            "preprandial": (8417868, "MDC_CTXT_GLU_MEAL_PREPRANDIAL", 29260),
            "postprandial": (8417872, "MDC_CTXT_GLU_MEAL_POSTPRANDIAL", 29264),
            "fasting": (8417876, "MDC_CTXT_GLU_MEAL_FASTING", 29268),
            "casual": (8417880, "MDC_CTXT_GLU_MEAL_CASUAL", 29272),
            "bedtime": None,
        },
    ),
    "tester": (
        8417884,
        "MDC_CTXT_GLU_TESTER",
        29276,
        {
            "self": (8417888, "MDC_CTXT_GLU_TESTER_SELF", 29280),
            "health-care-professional": (8417892, "MDC_CTXT_GLU_TESTER_HCP", 29284),
            "lab": (8417896, "MDC_CTXT_GLU_TESTER_LAB", 29288),
        },
    ),
    "health": (
        8417820,
        "MDC_CTXT_GLU_HEALTH",
        29212,
        {
            "minor-issues": (8417824, "MDC_CTXT_GLU_HEALTH_MINOR", 29216),
            "major-issues": (8417828, "MDC_CTXT_GLU_HEALTH_MAJOR", 29220),
            "menses": (8417832, "MDC_CTXT_GLU_HEALTH_MENSES", 29224),
            "stress": (8417836, "MDC_CTXT_GLU_HEALTH_STRESS", 29228),
            "none": (8417840, "MDC_CTXT_GLU_HEALTH_NONE", 29232),
        },
    ),
    "sample-location": (
        8417844,
        "MDC_CTXT_GLU_SAMPLELOCATION",
        29236,
        {
            "finger": (8417848, "MDC_CTXT_GLU_SAMPLELOCATION_FINGER", 29240),
            "alternate-site": (8417852, "MDC_CTXT_GLU_SAMPLELOCATION_AST", 29244),
            "earlobe": (8417856, "MDC_CTXT_GLU_SAMPLELOCATION_EARLOBE", 29248),
        },
    ),
}

# kind -> (BITS type code, ref id, partition, term, {name: (bit, ASN1ToHL7 display)})
STATUS = {
    "blood-pressure": (
        8410608,
        "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS",
        "PHD_DM",
        22000,
        {
            "body-movement": (0, "body-movement"),
            "cuff-too-loose": (1, "cuff-too-loose"),
            "irregular-pulse": (2, "irregular-pulse"),
            "pulse-rate-above-range": (3, "pulse-over-range-limit"),
            "pulse-rate-below-range": (4, "pulse-under-range-limit"),
            "improper-position": (5, "improper-body-position"),
        },
    ),
    "blood-glucose": (
        8417752,
        "MDC_GLU_METER_DEV_STATUS",
        "PHD_DM",
        29144,
        {
            "device-battery-low": (0, "device-battery-low"),
            "sensor-malfunction": (1, "sensor-malfunction"),
            "sample-size-insufficient": (2, "sensor-sample-size-insufficient"),
            "strip-insertion-error": (3, "sensor-strip-insertion"),
            "strip-type-incorrect": (4, "sensor-strip-type-incorrect"),
            "result-too-high": (5, "sensor-result-too-high"),
            "result-too-low": (6, "sensor-result-too-low"),
            "sensor-temperature-too-high": (7, "sensor-temp-too-high"),
            "sensor-temperature-too-low": (8, "sensor-temp-too-low"),
            "read-interrupted": (9, "sensor-read-interrupt"),
            "general-device-fault": (10, "device-gen-fault"),
        },
    ),
    "cgm": (
        8418060,
        "MDC_CGM_DEV_STAT",
        "PHD_DM",
        29452,
        {
            "session-stopped": (0, "sensor-session-stopped"),
            "sensor-type-incorrect": (2, "sensor-type-incorrect"),
            "sensor-malfunction": (3, "sensor-malfunction"),
            "device-specific-alert": (4, "device-specific-alert"),
            "calibration-not-allowed": (7, "sensor-calibration-not-allowed"),
            "calibration-recommended": (8, "sensor-calibration-recommended"),
            "calibration-required": (9, "sensor-calibration-required"),
            "sensor-temperature-too-high": (10, "sensor-temp-too-high"),
            "sensor-temperature-too-low": (11, "sensor-temp-too-low"),
            "result-below-patient-low": (12, "sensor-result-below-patient-low"),
            "result-above-patient-high": (13, "sensor-result-above-patient-high"),
            "result-below-hypo": (14, "sensor-low-hypo"),
            "result-above-hyper": (15, "sensor-high-hyper"),
            "rate-of-decrease-exceeded": (16, "sensor-rate-decrease-exceeded"),
            "rate-of-increase-exceeded": (17, "sensor-rate-increase-exceeded"),
            "result-too-low": (18, "sensor-result-too-low"),
            "result-too-high": (19, "sensor-result-too-high"),
            "communication-out-of-range": (20, "sensor-com-out-of-range"),
        },
    ),
    "spo2": (
        150604,
        "MDC_PULS_OXIM_DEV_STATUS",
        "SCADA",
        19532,
        {
            "sensor-disconnected": (0, "sensor-disconnected"),
            "sensor-malfunction": (1, "sensor-malfunction"),
            "sensor-displaced": (2, "sensor-displaced"),
            "sensor-unsupported": (3, "sensor-unsupported"),
            "sensor-off": (4, "sensor-off"),
            "sensor-interference": (5, "sensor-interference"),
            "signal-searching": (6, "signal-searching"),
            "signal-pulse-questionable": (7, "signal-pulse-questionable"),
            "signal-non-pulsatile": (8, "signal-non-pulsatile"),
            "signal-erratic": (9, "signal-erratic"),
            "signal-low-perfusion": (10, "signal-low-perfusion"),
            "signal-poor": (11, "signal-poor"),
            "signal-inadequate": (12, "signal-inadequate"),
            "signal-processing-irregularity": (13, "signal-processing-irregularity"),
            "device-equipment-malfunction": (14, "device-equipment-malfunction"),
            "device-extended-update": (15, "device-extended-update"),
        },
    ),
}

# name -> (MDC, ref id, partition::term, LOINC codes in order, R4 profile id | None, units)
SPO2: dict[str, QuantityRow] = {
    "spo2": (
        150456,
        "MDC_PULS_OXIM_SAT_O2",
        19384,
        [
            ("2708-6", "Oxygen saturation in Arterial blood"),
            ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
        ],
        "oxygensat",
        {"%"},
    ),
    "pulse-rate": (
        149530,
        "MDC_PULS_OXIM_PULS_RATE",
        18458,
        [("8867-4", "Heart rate")],
        "heartrate",
        {"/min"},
    ),
}
BODY_COMPOSITION: dict[str, QuantityRow] = {
    "body-fat": (
        188748,
        "MDC_BODY_FAT",
        57676,
        [("41982-0", "Percentage of body fat Measured")],
        None,
        {"%"},
    ),
    "fat-free-mass": (188756, "MDC_MASS_BODY_FAT_FREE", 57684, [], None, {"kg", "[lb_av]"}),
    "soft-lean-mass": (188760, "MDC_MASS_BODY_SOFT_LEAN", 57688, [], None, {"kg", "[lb_av]"}),
    "body-water-mass": (188764, "MDC_BODY_WATER", 57692, [], None, {"kg", "[lb_av]"}),
}
SPECIALIZATIONS = {
    "blood-glucose": (528401, "MDC_DEV_SPEC_PROFILE_GLUCOSE", 4113),
    "cgm": (528409, "MDC_DEV_SPEC_PROFILE_CGM", 4121),
    "spo2": (528388, "MDC_DEV_SPEC_PROFILE_PULS_OXIM", 4100),
    "body-composition": (528404, "MDC_DEV_SPEC_PROFILE_BCA", 4116),
}
# condition -> (status, data-absent-reason, interpretation, HTEST)
CONDITIONS = {
    "invalid-measurement": ("entered-in-error", ("error", "Error"), None, False),
    "questionable-measurement": (None, None, ("questionable", "Questionable"), False),
    "measurement-unavailable": (None, ("not-performed", "Not Performed"), None, False),
    "calibration-ongoing": (None, None, ("calibration-ongoing", "Calibration ongoing"), False),
    "early-estimate": ("preliminary", None, ("early-indication", "Early indication"), False),
    "demonstration-data": (None, None, None, True),
    "testing-data": (None, None, None, True),
}


def _loincs(term: codes.QuantityTerm, unit: str) -> list[tuple[str, str]]:
    first = term.loinc_for(unit)
    out = [] if first is None else [(first.code, first.display)]
    return out + [(extra.code, extra.display) for extra in term.extra_loinc]


@pytest.mark.parametrize("name", sorted(GLUCOSE_SPECIMENS))
def test_glucose_specimens(name: str) -> None:
    code, ref_id, term_code, mass, molar = GLUCOSE_SPECIMENS[name]
    term = codes.GLUCOSE_SPECIMENS[name]
    assert (term.mdc.code, term.mdc.ref_id) == (code, ref_id)
    assert code == mdc("SCADA", term_code)
    assert term.name == "glucose"
    assert term.units == {"mg/dL", "mmol/L"}
    assert term.profile is None  # not a vital sign
    assert _loincs(term, "mg/dL") == [mass]
    assert _loincs(term, "mmol/L") == [molar]


def test_glucose_tables_are_complete_and_default_is_documented() -> None:
    assert set(codes.GLUCOSE_SPECIMENS) == set(GLUCOSE_SPECIMENS)
    assert codes.DEFAULT_GLUCOSE_SPECIMEN == "undetermined-plasma"
    assert codes.GLUCOSE_QUANTITIES["glucose"].mdc.code == 160368  # PHD glucose example
    cgm = codes.CGM_QUANTITIES["glucose"]
    assert (cgm.mdc.code, cgm.mdc.ref_id) == (160212, "MDC_CONC_GLU_ISF")
    assert _loincs(cgm, "mg/dL") == [GLUCOSE_SPECIMENS["interstitial-fluid"][3]]
    assert _loincs(cgm, "mmol/L") == [GLUCOSE_SPECIMENS["interstitial-fluid"][4]]


def test_glucose_contexts() -> None:
    assert list(codes.GLUCOSE_CONTEXTS) == list(GLUCOSE_CONTEXTS)
    for key, (code, ref_id, term_code, values) in GLUCOSE_CONTEXTS.items():
        term = codes.GLUCOSE_CONTEXTS[key]
        assert term.key == key
        assert (term.mdc.code, term.mdc.ref_id) == (code, ref_id)
        assert code == mdc("PHD_DM", term_code)
        assert set(term.values) == set(values)
        for value, expected in values.items():
            got = term.values[value]
            if expected is None:
                assert got is None
                continue
            assert got is not None
            assert (got.code, got.ref_id) == expected[:2]
            assert got.code == mdc("PHD_DM", expected[2])
    # the two codes the PHD IG example attests
    assert codes.GLUCOSE_CONTEXTS["meal"].mdc.code == 8417864
    assert codes.GLUCOSE_CONTEXTS["meal"].values["postprandial"] == codes.Mdc(
        8417872, "MDC_CTXT_GLU_MEAL_POSTPRANDIAL"
    )
    sites = {name: (s.code, s.display) for name, s in codes.GLUCOSE_SAMPLE_SITES.items()}
    assert sites == {"finger": ("7569003", "Finger structure")}


@pytest.mark.parametrize("kind", sorted(STATUS))
def test_status_bits(kind: str) -> None:
    code, ref_id, partition, term_code, bits = STATUS[kind]
    term = codes.kind_term(kind).status
    assert term is not None
    assert (term.mdc.code, term.mdc.ref_id) == (code, ref_id)
    assert code == mdc(partition, term_code)
    assert {name: (b.bit, b.asn1_name) for name, b in term.bits.items()} == bits
    assert all(name == b.name for name, b in term.bits.items())
    numbers = [b.bit for b in term.bits.values()]
    assert len(set(numbers)) == len(numbers)  # one name per bit
    assert all(0 <= n < 32 for n in numbers)


def test_only_glucose_has_a_time_fault_name_and_kinds_without_status() -> None:
    assert codes.GLUCOSE_STATUS.time_fault == "time-fault"
    assert "time-fault" not in codes.GLUCOSE_STATUS.bits
    assert codes.BLOOD_PRESSURE_STATUS.time_fault is None
    for kind in ("weight", "body-temperature", "body-composition"):
        assert codes.kind_term(kind).status is None


@pytest.mark.parametrize(
    ("table", "expected"),
    [(codes.SPO2_QUANTITIES, SPO2), (codes.BODY_COMPOSITION_QUANTITIES, BODY_COMPOSITION)],
)
def test_quantity_tables(
    table: Mapping[str, codes.QuantityTerm], expected: dict[str, QuantityRow]
) -> None:
    for name, (code, ref_id, term_code, loincs, profile, units) in expected.items():
        term = table[name]
        assert (term.name, term.mdc.code, term.mdc.ref_id) == (name, code, ref_id)
        assert code == mdc("SCADA", term_code)
        unit = sorted(units)[0]
        assert _loincs(term, unit) == loincs
        assert term.profile == (
            None if profile is None else f"http://hl7.org/fhir/StructureDefinition/{profile}"
        )
        assert term.units == units


def test_spo2_pulse_is_not_the_blood_pressure_pulse() -> None:
    oximeter = codes.SPO2_QUANTITIES["pulse-rate"]
    monitor = codes.BP_PULSE_QUANTITIES["pulse-rate"]
    assert (oximeter.mdc.code, monitor.mdc.code) == (149530, 149546)
    assert oximeter.loinc == monitor.loinc  # both LOINC 8867-4 (PHD §2.8: many-to-one)


def test_body_composition_reuses_the_scale_terms() -> None:
    table = codes.BODY_COMPOSITION_QUANTITIES
    assert set(table) == set(codes.QUANTITIES) | set(BODY_COMPOSITION)
    for name, term in codes.QUANTITIES.items():
        assert table[name] is term


def test_unconfirmed_quantities_are_named_not_coded() -> None:
    unmapped = {kind: set(codes.kind_term(kind).unmapped) for kind in codes.KINDS}
    assert unmapped == {
        "weight": set(),
        "blood-pressure": set(),
        "body-temperature": set(),
        "blood-glucose": set(),
        "cgm": {"glucose-trend", "cgm-quality"},
        "spo2": {"pulse-amplitude-index"},
        "body-composition": {"muscle-mass", "muscle-percentage", "impedance", "basal-metabolism"},
    }
    for kind in codes.KINDS:
        term = codes.kind_term(kind)
        assert not set(term.unmapped) & set(term.numeric)


@pytest.mark.parametrize("kind", sorted(SPECIALIZATIONS))
def test_specializations(kind: str) -> None:
    code, ref_id, term_code = SPECIALIZATIONS[kind]
    spec = codes.specialization(kind)
    assert (spec.code, spec.ref_id) == (code, ref_id)
    assert code == mdc("INFRA", term_code)


def test_conditions() -> None:
    assert {
        name: (c.status, c.absent, c.interpretation, c.test_data)
        for name, c in codes.CONDITIONS.items()
    } == CONDITIONS
    assert codes.HTEST == ("HTEST", "test health data")


def test_device_status_codes_and_systems() -> None:
    assert (codes.BATTERY_CHARGE.code, codes.BATTERY_CHARGE.ref_id) == (
        mdc("OBJ", 2460),
        "MDC_ATTR_VAL_BATT_CHARGE",
    )
    assert codes.BATTERY_CHARGE.code == 67996
    clock = codes.CLOCK_TYPE_WALL_CLOCK
    assert (clock.code, clock.ref_id) == (67975, "MDC_ATTR_TIME_ABS")
    assert clock.code == mdc("OBJ", 2439)
    # in the required value set MDCClockTypes {67975, 68226, 67983, 68072}
    assert clock.code in {67975, 68226, 67983, 68072}
    assert codes.ASN1_TO_HL7_SYSTEM == "http://terminology.hl7.org/CodeSystem/ASN1ToHL7"
    assert (
        codes.MEASUREMENT_STATUS_SYSTEM
        == "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status"
    )
    assert codes.ACT_REASON_SYSTEM == "http://terminology.hl7.org/CodeSystem/v3-ActReason"
    assert (
        codes.COINCIDENT_TIME_STAMP_EXTENSION
        == "http://hl7.org/fhir/uv/phd/StructureDefinition/CoincidentTimeStampReference"
    )


def test_new_tables_are_read_only() -> None:
    for table in (
        codes.GLUCOSE_SPECIMENS,
        codes.GLUCOSE_CONTEXTS,
        codes.GLUCOSE_CONTEXTS["meal"].values,
        codes.GLUCOSE_STATUS.bits,
        codes.SPO2_QUANTITIES,
        codes.CONDITIONS,
        codes.BODY_COMPOSITION_QUANTITIES,
        codes.GLUCOSE_QUANTITIES["glucose"].loinc_by_unit,
    ):
        with pytest.raises(TypeError):
            table["x"] = None  # type: ignore[index]
