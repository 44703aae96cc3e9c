"""The terminology table, checked against an independent literal copy, and the unit helper."""

from __future__ import annotations

from decimal import Decimal

import pytest

from drivers.models import Absent
from mappers import codes
from mappers.errors import MappingError

# Written out by hand from the FHIR R4 vital-signs profiles and IEEE 11073-10101 (spec §3). Do
# not generate this from mappers.codes: its whole point is to disagree when the table is wrong.
EXPECTED_QUANTITIES = {
    "body-weight": (
        188736,
        "MDC_MASS_BODY_ACTUAL",
        "29463-7",
        "Body weight",
        "http://hl7.org/fhir/StructureDefinition/bodyweight",
        {"kg", "g", "[lb_av]"},
    ),
    "body-height": (
        188740,
        "MDC_LEN_BODY_ACTUAL",
        "8302-2",
        "Body height",
        "http://hl7.org/fhir/StructureDefinition/bodyheight",
        {"cm", "[in_i]"},
    ),
    "bmi": (
        188752,
        "MDC_RATIO_MASS_BODY_LEN_SQ",
        "39156-5",
        "Body mass index (BMI) [Ratio]",
        "http://hl7.org/fhir/StructureDefinition/bmi",
        {"kg/m2"},
    ),
}

# Codes a slip could put in the wrong row (the iomt-fhir diastolic/heart-rate mix-up, spec peers
# §6.8): none of them may appear anywhere in the weight-scale table.
FOREIGN_LOINC = {"8867-4", "8462-4", "8480-6", "85354-9", "8310-5", "2708-6", "41982-0"}


def test_quantity_table_matches_literal_terminology() -> None:
    assert set(codes.QUANTITIES) == set(EXPECTED_QUANTITIES)
    for name, (mdc, ref_id, loinc, display, profile, units) in EXPECTED_QUANTITIES.items():
        term = codes.QUANTITIES[name]
        assert term.name == name
        assert (term.mdc.code, term.mdc.ref_id) == (mdc, ref_id)
        assert term.loinc is not None
        assert (term.loinc.code, term.loinc.display) == (loinc, display)
        assert term.profile == profile
        assert term.units == units


def test_mdc_codes_are_partition_2_terms() -> None:
    # MDC_MASS_BODY_ACTUAL = 2::57664 etc. (32-bit code = partition * 65536 + term)
    assert {t.mdc.code for t in codes.QUANTITIES.values()} == {
        2 * 65536 + 57664,
        2 * 65536 + 57668,
        2 * 65536 + 57680,
    }


def test_no_foreign_loinc_code_in_table() -> None:
    assert not {t.loinc.code for t in codes.QUANTITIES.values() if t.loinc} & FOREIGN_LOINC
    assert all(t.loinc is not None for t in codes.QUANTITIES.values())


def test_device_and_version_codes() -> None:
    assert (codes.PHD_DEVICE_TYPE.code, codes.PHD_DEVICE_TYPE.ref_id) == (
        65573,
        "MDC_MOC_VMS_MDS_SIMP",
    )
    assert (codes.PHG_DEVICE_TYPE.code, codes.PHG_DEVICE_TYPE.ref_id) == (
        531981,
        "MDC_MOC_VMS_MDS_AHD",
    )
    assert codes.GENERIC_SPECIALIZATION.code == 528457
    scale = codes.specialization("weight")
    assert (scale.code, scale.ref_id) == (528399, "MDC_DEV_SPEC_PROFILE_SCALE")
    assert scale.code == 8 * 65536 + 4111
    assert (codes.VERSION_HW.code, codes.VERSION_SW.code, codes.VERSION_FW.code) == (
        531974,
        531975,
        531976,
    )
    assert codes.TIME_SYNC_PROTOCOL.code == 68220


@pytest.mark.parametrize(
    ("name", "code", "ref_id"),
    [
        ("none", 532224, "MDC_TIME_SYNC_NONE"),
        ("ntpv4", 532226, "MDC_TIME_SYNC_NTPV4"),
        ("sntpv4", 532227, "MDC_TIME_SYNC_SNTPV4"),
        ("SNTPv4", 532227, "MDC_TIME_SYNC_SNTPV4"),
        ("btv1", 532229, "MDC_TIME_SYNC_BTV1"),
        ("ebww", 532234, "MDC_TIME_SYNC_EBWW"),
        ("gps", 532238, "MDC_TIME_SYNC_GPS"),
    ],
)
def test_time_sync_methods(name: str, code: int, ref_id: str) -> None:
    method = codes.time_sync_method(name)
    assert (method.code, method.ref_id) == (code, ref_id)


def test_time_sync_methods_are_the_value_set_range() -> None:
    # PHD ValueSet MDCTimeSyncMethods: 532224 .. 532238, each once.
    assert sorted(m.code for m in codes.TIME_SYNC_METHODS.values()) == list(range(532224, 532239))
    assert all(m.ref_id.startswith("MDC_TIME_SYNC_") for m in codes.TIME_SYNC_METHODS.values())


def test_systems_and_urls() -> None:
    assert codes.MDC_SYSTEM == "urn:iso:std:iso:11073:10101"
    assert codes.LOINC_SYSTEM == "http://loinc.org"
    assert codes.UCUM_SYSTEM == "http://unitsofmeasure.org"
    assert (
        codes.CONTINUA_DEVICE_IDENTIFIERS
        == "http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers"
    )
    assert codes.SYSID_SYSTEM == "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
    assert codes.BTMAC_SYSTEM == "http://hl7.org/fhir/sid/eui-48/bluetooth"
    assert (
        codes.OBSERVATION_IDENTIFIER_SYSTEM
        == "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
    )
    assert (
        codes.GATEWAY_DEVICE_EXTENSION
        == "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
    )
    assert (codes.PHD_CATEGORY_SYSTEM, codes.PHD_CATEGORY_CODE) == (
        "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories",
        "phd",
    )


def test_data_absent_reasons_cover_every_marker() -> None:
    assert {why: code for why, (code, _) in codes.DATA_ABSENT_REASONS.items()} == {
        Absent.NAN: "not-a-number",
        Absent.POSITIVE_INFINITY: "positive-infinity",
        Absent.NEGATIVE_INFINITY: "negative-infinity",
        Absent.NRES: "error",
        Absent.RESERVED: "error",
        Absent.UNSUCCESSFUL: "error",
    }


def test_tables_are_read_only() -> None:
    with pytest.raises(TypeError):
        codes.QUANTITIES["pulse"] = codes.QUANTITIES["bmi"]  # type: ignore[index]
    with pytest.raises(TypeError):
        codes.TIME_SYNC_METHODS["x"] = codes.TIME_SYNC_METHODS["gps"]  # type: ignore[index]


# --- unit helper ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "unit", "expected_value", "expected_unit"),
    [
        ("body-height", "1.750", "m", "175.0", "cm"),
        ("body-height", "1.75", "m", "175", "cm"),
        ("body-height", "0.001", "m", "0.1", "cm"),
        ("body-height", "2", "m", "200", "cm"),
        ("body-height", "1.8", "m", "180", "cm"),
        ("body-height", "175.5", "cm", "175.5", "cm"),
        ("body-height", "68.9", "[in_i]", "68.9", "[in_i]"),
        ("body-weight", "65.700", "kg", "65.700", "kg"),
        ("body-weight", "65.70", "kg", "65.70", "kg"),
        ("body-weight", "144.80", "[lb_av]", "144.80", "[lb_av]"),
        ("body-weight", "65700", "g", "65700", "g"),
        ("body-weight", "1.2E+2", "kg", "120", "kg"),
        ("bmi", "21.5", "kg/m2", "21.5", "kg/m2"),
    ],
)
def test_to_profile_unit_is_exact(
    name: str, value: str, unit: str, expected_value: str, expected_unit: str
) -> None:
    converted, out_unit = codes.to_profile_unit(name, Decimal(value), unit)
    assert isinstance(converted, Decimal)
    assert str(converted) == expected_value
    assert out_unit == expected_unit
    assert converted == Decimal(value) * (100 if unit == "m" else 1)


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("body-weight", "m"),
        ("body-weight", "lb"),
        ("body-height", "kg"),
        ("body-height", "in"),
        ("bmi", "kg/m^2"),
        ("bmi", "m"),
        ("pulse", "/min"),
    ],
)
def test_units_the_profile_cannot_take_are_refused(name: str, unit: str) -> None:
    with pytest.raises(MappingError):
        codes.to_profile_unit(name, Decimal("1.0"), unit)


@pytest.mark.parametrize("bad", [65.7, Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_value_must_be_a_finite_decimal(bad: object) -> None:
    with pytest.raises(MappingError):
        codes.to_profile_unit("body-weight", bad, "kg")  # type: ignore[arg-type]


def test_unit_display_exists_for_every_profile_unit() -> None:
    for term in codes.QUANTITIES.values():
        assert term.units <= set(codes.UCUM_DISPLAY)
    assert codes.UCUM_DISPLAY["[lb_av]"] == "lb"
    assert codes.UCUM_DISPLAY["[in_i]"] == "in"
