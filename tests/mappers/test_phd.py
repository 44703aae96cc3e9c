"""``mappers.phd``: hand-built readings in, R4B-valid PHD resources out."""

from __future__ import annotations

import copy
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.models import Absent, DeviceIdentity, GatewayInfo, PatientRef, Quantity, TimeSource
from mappers.errors import MappingError
from mappers.phd import (
    format_datetime,
    map_reading,
    observation_identifier,
    transaction_bundle,
)
from tests.mappers.factories import (
    BARE_SCALE,
    GATEWAY,
    OTHER_PATIENT,
    PATIENT,
    SCALE,
    absent,
    collect_references,
    kg,
    reading,
    si_reading,
    validate_entries,
)

MDC = "urn:iso:std:iso:11073:10101"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SYSID = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
BTMAC = "http://hl7.org/fhir/sid/eui-48/bluetooth"
OBS_ID = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
IDTYPE = "http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers"
DAR = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
DAR_EXT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
GATEWAY_EXT = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"

# 2026-08-22 08:42:36 is 9730 days + 31356 s after 2000-01-01 00:00:00.
DEVICE_TS = "840703356"
# Receipt 2026-08-22 06:43:01.250 UTC, in seconds since 2000 with microseconds.
RECEIPT_TS = "840696181.250000"

# (LOINC code, LOINC display, MDC code, MDC ref id, R4 profile) per quantity, written out again
# here on purpose so that a swapped row in mappers.codes fails this file too.
TERMS = {
    "body-weight": ("29463-7", "Body weight", "188736", "MDC_MASS_BODY_ACTUAL", "bodyweight"),
    "body-height": ("8302-2", "Body height", "188740", "MDC_LEN_BODY_ACTUAL", "bodyheight"),
    "bmi": (
        "39156-5",
        "Body mass index (BMI) [Ratio]",
        "188752",
        "MDC_RATIO_MASS_BODY_LEN_SQ",
        "bmi",
    ),
}


def observations(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["resource"] for e in entries if e["resource"]["resourceType"] == "Observation"]


def by_loinc(entries: list[dict[str, Any]], loinc: str) -> dict[str, Any]:
    (found,) = [o for o in observations(entries) if o["code"]["coding"][1]["code"] == loinc]
    return found


# --- the SI reading (weight + height + BMI) -------------------------------------------------------


def test_si_reading_entry_order_and_validation() -> None:
    entries = map_reading(si_reading(), PATIENT, GATEWAY)
    bundle = validate_entries(entries)
    assert len(bundle.entry) == 5
    profiles = [e["resource"]["meta"]["profile"] for e in entries]
    assert profiles[0] == ["http://hl7.org/fhir/uv/phd/StructureDefinition/PhgDevice"]
    assert profiles[1] == ["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdDevice"]
    assert [p[0].rsplit("/", 1)[1] for p in profiles[2:]] == ["bodyweight", "bodyheight", "bmi"]
    for entry in entries:
        assert entry["request"]["method"] == "POST"
        assert entry["request"]["url"] == entry["resource"]["resourceType"]


def test_si_observations_codes_units_and_values() -> None:
    entries = map_reading(si_reading(), PATIENT, GATEWAY)
    expected = {
        "body-weight": ("65.700", "kg", "kg"),
        "body-height": ("175.0", "cm", "cm"),
        "bmi": ("21.5", "kg/m2", "kg/m2"),
    }
    for name, (value, code, unit) in expected.items():
        loinc, loinc_display, mdc, ref_id, profile = TERMS[name]
        obs = by_loinc(entries, loinc)
        assert obs["code"]["coding"] == [
            {"system": MDC, "code": mdc, "display": ref_id},
            {"system": LOINC, "code": loinc, "display": loinc_display},
        ]
        assert obs["meta"]["profile"] == [
            f"http://hl7.org/fhir/StructureDefinition/{profile}",
            "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdNumericObservation",
        ]
        quantity = obs["valueQuantity"]
        assert isinstance(quantity["value"], Decimal)
        assert str(quantity["value"]) == value
        assert quantity == {"value": quantity["value"], "unit": unit, "system": UCUM, "code": code}
        assert "dataAbsentReason" not in obs


def test_observation_common_elements() -> None:
    entries = map_reading(si_reading(), PATIENT, GATEWAY)
    gateway_url, device_url = entries[0]["fullUrl"], entries[1]["fullUrl"]
    for obs in observations(entries):
        assert obs["status"] == "final"
        assert obs["category"] == [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            },
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories",
                        "code": "phd",
                    }
                ]
            },
        ]
        assert obs["extension"] == [
            {"url": GATEWAY_EXT, "valueReference": {"reference": gateway_url}}
        ]
        assert obs["device"] == {"reference": device_url}
        assert obs["subject"] == {
            "identifier": {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "2800175123456"}
        }
        assert obs["effectiveDateTime"] == "2026-08-22T08:42:36+02:00"
        assert "note" not in obs
        assert "performer" not in obs


def test_observation_identifier_format() -> None:
    entries = map_reading(si_reading(), PATIENT, GATEWAY)
    weight = by_loinc(entries, "29463-7")
    value = f"74E8FFFEFF051C00-2800175123456-urn:oid:1.2.250.1.213.1.4.8-188736-{DEVICE_TS}"
    assert weight["identifier"] == [{"system": OBS_ID, "value": value}]
    assert observation_identifier(si_reading(), PATIENT, 188736) == value
    height = by_loinc(entries, "8302-2")
    assert height["identifier"][0]["value"].endswith(f"-188740-{DEVICE_TS}")
    bmi = by_loinc(entries, "39156-5")
    assert bmi["identifier"][0]["value"].endswith(f"-188752-{DEVICE_TS}")


def test_if_none_exist_strings() -> None:
    entries = map_reading(si_reading(), PATIENT, GATEWAY)
    assert [e["request"]["ifNoneExist"] for e in entries] == [
        f"identifier={SYSID}|EC-DE-3D-4E-58-53-2D-31",
        f"identifier={SYSID}|74-E8-FF-FE-FF-05-1C-00",
        f"identifier={OBS_ID}|74E8FFFEFF051C00-2800175123456-urn%3Aoid%3A1.2.250.1.213.1.4.8"
        f"-188736-{DEVICE_TS}",
        f"identifier={OBS_ID}|74E8FFFEFF051C00-2800175123456-urn%3Aoid%3A1.2.250.1.213.1.4.8"
        f"-188740-{DEVICE_TS}",
        f"identifier={OBS_ID}|74E8FFFEFF051C00-2800175123456-urn%3Aoid%3A1.2.250.1.213.1.4.8"
        f"-188752-{DEVICE_TS}",
    ]


def test_if_none_exist_escapes_search_specials() -> None:
    odd = PatientRef(system="http://example.org/ids", value="a,b|c$d\\e f")
    entries = map_reading(reading(), odd, GATEWAY)
    ident = observations(entries)[0]["identifier"][0]["value"]
    assert ident.startswith("74E8FFFEFF051C00-a,b|c$d\\e f-http://example.org/ids-188736-")
    assert entries[2]["request"]["ifNoneExist"] == (
        f"identifier={OBS_ID}|74E8FFFEFF051C00-a%5C%2Cb%5C%7Cc%5C%24d%5C%5Ce%20f"
        f"-http%3A%2F%2Fexample.org%2Fids-188736-{DEVICE_TS}"
    )
    validate_entries(entries)


def test_references_resolve_inside_the_bundle() -> None:
    entries = map_reading(si_reading(), PATIENT, GATEWAY)
    bundle = transaction_bundle(entries)
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert len(urls) == len(bundle["entry"])
    for entry in bundle["entry"]:
        parsed = uuid.UUID(entry["fullUrl"].removeprefix("urn:uuid:"))
        assert entry["fullUrl"] == f"urn:uuid:{parsed}"
        assert parsed.version == 5
        for ref in collect_references(entry["resource"]):
            assert ref in urls
    phg, phd = bundle["entry"][0], bundle["entry"][1]
    assert phg["resource"]["type"]["coding"][0]["code"] == "531981"
    assert phd["resource"]["type"]["coding"][0]["code"] == "65573"


def test_transaction_bundle_shape() -> None:
    entries = map_reading(si_reading(), PATIENT, GATEWAY)
    bundle = transaction_bundle(entries)
    assert bundle == {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    assert bundle["entry"] is not entries


# --- devices --------------------------------------------------------------------------------------


def test_phd_device_with_system_id() -> None:
    device = map_reading(si_reading(), PATIENT, GATEWAY)[1]["resource"]
    assert device["identifier"] == [
        {
            "type": {
                "coding": [
                    {"system": IDTYPE, "code": "SYSID", "display": "IEEE 11073 System Identifier"}
                ]
            },
            "system": SYSID,
            "value": "74-E8-FF-FE-FF-05-1C-00",
        },
        {
            "type": {
                "coding": [{"system": IDTYPE, "code": "BTMAC", "display": "Bluetooth MAC address"}]
            },
            "system": BTMAC,
            "value": "00-1C-05-FF-E8-74",
        },
    ]
    assert device["manufacturer"] == "ACME Health"
    assert device["modelNumber"] == "WS-100"
    assert device["serialNumber"] == "SN0042"
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
    assert [(v["type"]["coding"][0]["code"], v["value"]) for v in device["version"]] == [
        ("531976", "2.1.0"),
        ("531975", "1.5"),
        ("531974", "rev B"),
    ]
    assert "parent" not in device


def test_phg_device() -> None:
    gateway = map_reading(si_reading(), PATIENT, GATEWAY)[0]["resource"]
    assert gateway["identifier"] == [
        {
            "type": {
                "coding": [
                    {"system": IDTYPE, "code": "SYSID", "display": "IEEE 11073 System Identifier"}
                ]
            },
            "system": SYSID,
            "value": "EC-DE-3D-4E-58-53-2D-31",
        }
    ]
    assert gateway["manufacturer"] == "edge project"
    assert gateway["modelNumber"] == "edge"
    assert gateway["type"]["coding"] == [
        {"system": MDC, "code": "531981", "display": "MDC_MOC_VMS_MDS_AHD"}
    ]
    assert gateway["specialization"] == [
        {
            "systemType": {
                "coding": [
                    {"system": MDC, "code": "528457", "display": "MDC_DEV_SPEC_PROFILE_GENERIC"}
                ]
            },
            "version": "1",
        }
    ]
    assert gateway["version"] == [
        {
            "type": {
                "coding": [{"system": MDC, "code": "531975", "display": "MDC_ID_PROD_SPEC_SW"}]
            },
            "value": "0.1.0",
        }
    ]
    assert gateway["property"] == [
        {
            "type": {
                "coding": [{"system": MDC, "code": "68220", "display": "MDC_TIME_SYNC_PROTOCOL"}]
            },
            "valueCode": [
                {"coding": [{"system": MDC, "code": "532226", "display": "MDC_TIME_SYNC_NTPV4"}]}
            ],
        }
    ]


def test_device_without_system_id_is_keyed_on_btmac() -> None:
    entries = map_reading(reading(device=BARE_SCALE), PATIENT, GATEWAY)
    validate_entries(entries)
    device_entry = entries[1]
    device = device_entry["resource"]
    assert device["identifier"] == [
        {
            "type": {
                "coding": [{"system": IDTYPE, "code": "BTMAC", "display": "Bluetooth MAC address"}]
            },
            "system": BTMAC,
            "value": "A4-C1-38-0B-2E-7F",
        }
    ]
    assert device_entry["request"]["ifNoneExist"] == f"identifier={BTMAC}|A4-C1-38-0B-2E-7F"
    expected = uuid.uuid5(
        uuid.UUID("04da8ce2-bffb-43a7-a85d-ddaf1a237736"), f"Device/{BTMAC}|A4-C1-38-0B-2E-7F"
    )
    assert device_entry["fullUrl"] == f"urn:uuid:{expected}"
    # the Observation identifier's device part is the bare EUI-48
    ident = observations(entries)[0]["identifier"][0]["value"]
    assert ident == f"A4C1380B2E7F-2800175123456-urn:oid:1.2.250.1.213.1.4.8-188736-{DEVICE_TS}"


def test_unknown_device_strings_use_data_absent_reason() -> None:
    device = map_reading(reading(device=BARE_SCALE), PATIENT, GATEWAY)[1]["resource"]
    unknown = {"extension": [{"url": DAR_EXT, "valueCode": "unknown"}]}
    assert "manufacturer" not in device
    assert "modelNumber" not in device
    assert "serialNumber" not in device
    assert device["_manufacturer"] == unknown
    assert device["_modelNumber"] == unknown
    assert device["version"] == [
        {
            "type": {
                "coding": [{"system": MDC, "code": "531976", "display": "MDC_ID_PROD_SPEC_FW"}]
            },
            "_value": unknown,
        }
    ]


def test_device_strings_are_cleaned() -> None:
    messy = DeviceIdentity(
        address="00:1C:05:FF:E8:74",
        manufacturer="ACME\x00\x00\x00",
        model="  WS-100 \n",
        serial="",
        firmware="\x00",
        software="1.5\x00",
    )
    entries = map_reading(reading(device=messy), PATIENT, GATEWAY)
    validate_entries(entries)
    device = entries[1]["resource"]
    assert device["manufacturer"] == "ACME"
    assert device["modelNumber"] == "WS-100"
    assert "serialNumber" not in device
    assert [(v["type"]["coding"][0]["code"], v["value"]) for v in device["version"]] == [
        ("531975", "1.5")
    ]


def test_lower_case_and_dashed_addresses_are_normalised() -> None:
    device = DeviceIdentity(address="00-1c-05-ff-e8-74", system_id="74e8fffeff051c00")
    entries = map_reading(reading(device=device), PATIENT, GATEWAY)
    values = [i["value"] for i in entries[1]["resource"]["identifier"]]
    assert values == ["74-E8-FF-FE-FF-05-1C-00", "00-1C-05-FF-E8-74"]


# --- variants -------------------------------------------------------------------------------------


def test_imperial_reading() -> None:
    entries = map_reading(
        reading(
            Quantity(name="body-weight", value=Decimal("144.80"), unit="[lb_av]"),
            Quantity(name="body-height", value=Decimal("68.9"), unit="[in_i]"),
        ),
        PATIENT,
        GATEWAY,
    )
    validate_entries(entries)
    weight = by_loinc(entries, "29463-7")["valueQuantity"]
    height = by_loinc(entries, "8302-2")["valueQuantity"]
    assert (str(weight["value"]), weight["code"], weight["unit"]) == ("144.80", "[lb_av]", "lb")
    assert (str(height["value"]), height["code"], height["unit"]) == ("68.9", "[in_i]", "in")
    assert weight["system"] == height["system"] == UCUM


def test_reading_without_device_time_uses_receipt_time() -> None:
    received = datetime(2026, 8, 22, 6, 43, 1, 250_000, tzinfo=UTC)
    r = reading(
        device_time=None,
        effective_time=received,
        time_source=TimeSource.GATEWAY_RECEIPT,
        received_at=received,
    )
    entries = map_reading(r, PATIENT, GATEWAY)
    validate_entries(entries)
    obs = observations(entries)[0]
    assert obs["effectiveDateTime"] == "2026-08-22T06:43:01+00:00"
    assert obs["identifier"][0]["value"].endswith(f"-188736-{RECEIPT_TS}")
    # stable: the receipt time is part of the stored reading, not the moment of mapping
    assert map_reading(r, PATIENT, GATEWAY) == entries


@pytest.mark.parametrize(
    ("why", "code", "display"),
    [
        (Absent.UNSUCCESSFUL, "error", "Error"),
        (Absent.NRES, "error", "Error"),
        (Absent.RESERVED, "error", "Error"),
        (Absent.NAN, "not-a-number", "Not a Number (NaN)"),
        (Absent.POSITIVE_INFINITY, "positive-infinity", "Positive Infinity (PINF)"),
        (Absent.NEGATIVE_INFINITY, "negative-infinity", "Negative Infinity (NINF)"),
    ],
)
def test_absent_weight_maps_to_data_absent_reason(why: Absent, code: str, display: str) -> None:
    entries = map_reading(reading(absent("body-weight", why)), PATIENT, GATEWAY)
    validate_entries(entries)
    obs = observations(entries)[0]
    assert "valueQuantity" not in obs
    assert obs["dataAbsentReason"] == {
        "coding": [{"system": DAR, "code": code, "display": display}]
    }
    assert obs["status"] == "final"
    assert obs["identifier"][0]["value"].endswith(f"-188736-{DEVICE_TS}")


def test_unsuccessful_weight_next_to_valid_bmi() -> None:
    entries = map_reading(
        reading(
            absent("body-weight", Absent.UNSUCCESSFUL, unit="[lb_av]"),
            Quantity(name="bmi", value=Decimal("22.1"), unit="kg/m2"),
        ),
        PATIENT,
        GATEWAY,
    )
    validate_entries(entries)
    assert by_loinc(entries, "29463-7")["dataAbsentReason"]["coding"][0]["code"] == "error"
    assert str(by_loinc(entries, "39156-5")["valueQuantity"]["value"]) == "22.1"


def test_user_index_does_not_change_output_for_the_same_patient() -> None:
    base = map_reading(reading(user_index=1), PATIENT, GATEWAY)
    for user in (None, 0, 3, 0xFF):
        assert map_reading(reading(user_index=user), PATIENT, GATEWAY) == base


def test_different_patient_gives_different_identifier_and_full_url() -> None:
    mine = map_reading(reading(), PATIENT, GATEWAY)
    theirs = map_reading(reading(), OTHER_PATIENT, GATEWAY)
    assert mine[:2] == theirs[:2]  # same devices
    a, b = mine[2], theirs[2]
    assert a["resource"]["identifier"] != b["resource"]["identifier"]
    assert a["fullUrl"] != b["fullUrl"]
    assert a["request"]["ifNoneExist"] != b["request"]["ifNoneExist"]
    assert OTHER_PATIENT.value in b["resource"]["identifier"][0]["value"]


def test_same_patient_value_in_another_system_differs() -> None:
    other_system = PatientRef(system="urn:oid:1.2.3.4", value=PATIENT.value)
    a = map_reading(reading(), PATIENT, GATEWAY)[2]
    b = map_reading(reading(), other_system, GATEWAY)[2]
    assert a["resource"]["identifier"] != b["resource"]["identifier"]


def test_identifier_uses_reported_time_not_corrected_time() -> None:
    # Two gateways in different zones (or one that later corrected the clock) see the same record.
    paris = reading()
    shifted = reading(effective_time=datetime(2026, 8, 22, 6, 42, 36, tzinfo=UTC))
    a = observations(map_reading(paris, PATIENT, GATEWAY))[0]
    b = observations(map_reading(shifted, PATIENT, GATEWAY))[0]
    assert a["identifier"] == b["identifier"]
    assert a["effectiveDateTime"] != b["effectiveDateTime"]


def test_retries_produce_byte_identical_bundles() -> None:
    first = json.dumps(transaction_bundle(map_reading(si_reading(), PATIENT, GATEWAY)), default=str)
    second = json.dumps(
        transaction_bundle(map_reading(si_reading(), PATIENT, GATEWAY)), default=str
    )
    assert first == second


def test_output_shares_no_state_between_calls() -> None:
    first = map_reading(si_reading(), PATIENT, GATEWAY)
    pristine = copy.deepcopy(first)
    first[2]["resource"]["code"]["coding"][0]["code"] = "tampered"  # Observations are fresh
    # device entries are built once and shared: they refuse any change, deep down
    with pytest.raises(TypeError):
        first[0]["resource"]["meta"]["profile"].append("x")
    with pytest.raises(TypeError):
        first[1]["resource"]["identifier"][0]["value"] = "x"
    with pytest.raises(TypeError):
        first[1]["request"].update(method="PUT")
    assert map_reading(si_reading(), PATIENT, GATEWAY) == pristine


def test_no_raw_payload_or_user_index_leaks() -> None:
    text = json.dumps(map_reading(si_reading(), PATIENT, GATEWAY), default=str)
    assert "0e5a19ea" not in text
    assert "user" not in text.lower()
    assert '"note"' not in text


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 8, 22, 8, 42, 36, tzinfo=timezone(timedelta(hours=2))), "+02:00"),
        (datetime(2026, 1, 5, 7, 0, 0, 999_999, tzinfo=UTC), "+00:00"),
        (datetime(2026, 1, 5, 7, 0, 0, tzinfo=timezone(timedelta(hours=-5))), "-05:00"),
        (datetime(2026, 1, 5, 7, 0, 0, tzinfo=timezone(timedelta(hours=5, minutes=45))), "+05:45"),
    ],
)
def test_effective_date_time_keeps_offset_at_seconds_precision(
    moment: datetime, expected: str
) -> None:
    text = format_datetime(moment)
    assert text.endswith(expected)
    assert len(text) == len("2026-08-22T08:42:36+02:00")
    entries = map_reading(reading(effective_time=moment), PATIENT, GATEWAY)
    assert observations(entries)[0]["effectiveDateTime"] == text
    validate_entries(entries)


# --- transaction_bundle ---------------------------------------------------------------------------


def test_bundle_of_two_readings_keeps_shared_devices_once() -> None:
    later = reading(kg("66.100"), device_time=datetime(2026, 8, 23, 7, 0, 0))
    entries = map_reading(reading(), PATIENT, GATEWAY) + map_reading(later, PATIENT, GATEWAY)
    bundle = transaction_bundle(entries)
    assert len(bundle["entry"]) == 4
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == [
        "Device",
        "Device",
        "Observation",
        "Observation",
    ]
    validate_entries(bundle["entry"])


def test_bundle_refuses_conflicting_entries() -> None:
    first = map_reading(reading(kg("65.700")), PATIENT, GATEWAY)
    clash = map_reading(reading(kg("70.000")), PATIENT, GATEWAY)  # same identifier, other value
    with pytest.raises(MappingError):
        transaction_bundle(first + clash)


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: reading(effective_time=datetime(2026, 8, 22, 8, 42, 36)), "naive time"),
        (
            lambda: reading(
                effective_time=datetime(
                    2026, 8, 22, tzinfo=timezone(timedelta(hours=1, seconds=30))
                )
            ),
            "sub-minute offset",
        ),
        (lambda: reading(Quantity(name="pulse", value=Decimal(60), unit="/min")), "unknown name"),
        (lambda: reading(Quantity(name="body-weight", value=Decimal(1), unit="m")), "bad unit"),
        (lambda: reading(absent("body-height", Absent.NAN, unit="kg")), "bad unit, absent"),
        (lambda: reading(kg("65.7"), kg("65.8")), "duplicate"),
        (lambda: reading(Quantity(name="bmi", value=None, unit="kg/m2")), "no value"),
        (
            lambda: reading(
                Quantity(name="bmi", value=Decimal("21"), unit="kg/m2", absent=Absent.NAN)
            ),
            "value and absent",
        ),
        (
            lambda: reading(Quantity(name="bmi", value=None, unit="kg/m2", absent="bogus")),  # type: ignore[arg-type]
            "unknown absent",
        ),
        (lambda: reading(kg("NaN")), "NaN decimal"),
        (lambda: reading(kind="blood-pressure"), "unknown kind"),
        (
            lambda: reading(device=DeviceIdentity(address="00:1C:05:FF:E8")),
            "short address",
        ),
        (
            lambda: reading(device=DeviceIdentity(address="00:1C:05:FF:E8:74", system_id="XYZ")),
            "bad system id",
        ),
    ],
)
def test_unmappable_readings_raise_mapping_error(make: Any, why: str) -> None:
    with pytest.raises(MappingError) as caught:
        map_reading(make(), PATIENT, GATEWAY)
    message = str(caught.value)
    assert PATIENT.value not in message, why
    assert "65.7" not in message, why


def test_reading_without_quantities_is_refused() -> None:
    empty = dataclasses.replace(reading(), quantities=())
    with pytest.raises(MappingError):
        map_reading(empty, PATIENT, GATEWAY)


@pytest.mark.parametrize(
    "gateway",
    [
        GatewayInfo(system_id="ECDE3D4E58532D", software_version="0.1.0"),
        GatewayInfo(system_id="ECDE3D4E58532D31", software_version="0.1.0", time_sync="sundial"),
        GatewayInfo(system_id="74E8FFFEFF051C00", software_version="0.1.0"),  # same as the scale
    ],
)
def test_bad_gateway_info_is_refused(gateway: GatewayInfo) -> None:
    with pytest.raises(MappingError):
        map_reading(reading(device=SCALE), PATIENT, gateway)


@pytest.mark.parametrize(
    "patient",
    [
        PatientRef(system="", value="123"),
        PatientRef(system="urn:oid:1.2 3", value="123"),
        PatientRef(system="urn:oid:1.2.3", value=""),
        PatientRef(system="urn:oid:1.2.3", value=" 123"),
    ],
)
def test_malformed_patient_is_refused(patient: PatientRef) -> None:
    with pytest.raises(MappingError):
        map_reading(reading(), patient, GATEWAY)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda obs: obs.update(bogus=1),
        lambda obs: obs.update(valueString="also a value"),
        lambda obs: obs.update(effectiveDateTime="2026-08-22T08:42:36"),
        lambda obs: obs["valueQuantity"].update(value="heavy"),
    ],
)
def test_the_r4b_check_is_not_vacuous(breakage: Any) -> None:
    entries = copy.deepcopy(map_reading(si_reading(), PATIENT, GATEWAY))
    breakage(entries[2]["resource"])
    with pytest.raises(ValueError):  # pydantic.ValidationError is a ValueError
        validate_entries(entries)


@given(st.text())
def test_percent_encoding_matches_urllib_quote(value):
    from urllib.parse import quote

    from mappers.phd import _percent_encode

    assert _percent_encode(value) == quote(value, safe="")


@given(st.text())
def test_fast_uuid5_is_the_standard_uuid5(name):
    import uuid

    from mappers.phd import _FULL_URL_NAMESPACE, _uuid5

    assert _uuid5(name) == str(uuid.uuid5(_FULL_URL_NAMESPACE, name))


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from([None, UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=13))]),
)
def test_the_identifier_timestamp_is_the_truncated_seconds_since_2000(moment, zone):
    # what every identifier ever sent holds: the integer path must give the float path's text
    device_time = moment if zone is None else moment.replace(tzinfo=zone)
    expected = str(int((moment - datetime(2000, 1, 1)).total_seconds()))
    assert dataclasses.replace(reading(), device_time=device_time).timestamp_part == expected
