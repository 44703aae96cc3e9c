"""Device status: the coincident time stamp (``Reading.clock``) and the battery level."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from drivers.models import ClockCheck, Reading, TimeSource
from mappers.errors import MappingError
from mappers.phd import map_reading, transaction_bundle
from tests.mappers.factories import (
    GATEWAY,
    PATIENT,
    by_profile,
    kg,
    observations,
    reading,
    si_reading,
    validate_entries,
)

MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
DAR = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
OBS_ID = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
COINCIDENT = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCoincidentTimeStampObservation"
NUMERIC = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdNumericObservation"
COINCIDENT_EXT = "http://hl7.org/fhir/uv/phd/StructureDefinition/CoincidentTimeStampReference"
GATEWAY_EXT = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
NAMESPACE = uuid.UUID("04da8ce2-bffb-43a7-a85d-ddaf1a237736")

# 2026-08-22 06:45:10.125 UTC: 9730 days + 24310.125 s after 2000-01-01 00:00:00 UTC.
GATEWAY_TIME = datetime(2026, 8, 22, 6, 45, 10, 125_000, tzinfo=UTC)
GATEWAY_TS = "840696310.125000"
CLOCK = ClockCheck(device_time=datetime(2026, 8, 22, 8, 44, 58, 750_000), gateway_time=GATEWAY_TIME)
# Receipt 2026-08-22 06:43:01.250 UTC (factories.reading default).
RECEIPT_TS = "840696181.250000"


def with_clock(r: Reading, clock: ClockCheck = CLOCK) -> Reading:
    return replace(r, clock=clock)


def the_coincident(entries: list[dict[str, Any]]) -> dict[str, Any]:
    (entry,) = by_profile(entries, "PhdCoincidentTimeStampObservation")
    return entry


def the_battery(entries: list[dict[str, Any]]) -> dict[str, Any]:
    (entry,) = [
        e
        for e in entries
        if e["resource"].get("code", {}).get("coding", [{}])[0].get("code") == "67996"
    ]
    return entry


# --- coincident time stamp ------------------------------------------------------------------------


def test_coincident_time_stamp_shape() -> None:
    entries = map_reading(with_clock(si_reading()), PATIENT, GATEWAY)
    validate_entries(entries)
    validate_entries(transaction_bundle(entries)["entry"])
    assert len(entries) == 6
    entry = entries[-1]  # appended after the patient Observations
    coincident = entry["resource"]
    assert coincident == {
        "resourceType": "Observation",
        "meta": {"profile": [COINCIDENT]},
        "identifier": [{"system": OBS_ID, "value": f"74E8FFFEFF051C00-67975-{GATEWAY_TS}"}],
        "status": "final",
        "code": {"coding": [{"system": MDC, "code": "67975", "display": "MDC_ATTR_TIME_ABS"}]},
        "subject": {"reference": entries[1]["fullUrl"]},  # the PHD
        "effectiveDateTime": "2026-08-22T06:45:10.125+00:00",
        "valueDateTime": "2026-08-22T08:44:58.750+02:00",  # the gateway's offset
        "device": {"reference": entries[0]["fullUrl"]},  # the PHG
    }
    value = f"74E8FFFEFF051C00-67975-{GATEWAY_TS}"
    assert entry["request"] == {
        "method": "POST",
        "url": "Observation",
        "ifNoneExist": f"identifier={OBS_ID}|{value}",
    }
    assert entry["fullUrl"] == f"urn:uuid:{uuid.uuid5(NAMESPACE, f'Observation/{OBS_ID}|{value}')}"
    # every patient Observation points at it
    for obs in observations(entries[:-1]):
        assert obs["extension"] == [
            {"url": GATEWAY_EXT, "valueReference": {"reference": entries[0]["fullUrl"]}},
            {"url": COINCIDENT_EXT, "valueReference": {"reference": entry["fullUrl"]}},
        ]
    assert "performer" not in coincident and "derivedFrom" not in coincident


def test_patient_observations_only_gain_the_reference() -> None:
    plain = map_reading(si_reading(), PATIENT, GATEWAY)
    clocked = map_reading(with_clock(si_reading()), PATIENT, GATEWAY)
    assert clocked[:2] == plain[:2]
    for before, after in zip(plain[2:], clocked[2:5], strict=True):
        assert after["fullUrl"] == before["fullUrl"]
        resource = dict(after["resource"])
        resource["extension"] = resource["extension"][:1]
        assert resource == before["resource"]


@pytest.mark.parametrize(
    ("source", "zone", "expected"),
    [
        (TimeSource.DEVICE_LOCAL, timezone(timedelta(hours=2)), "2026-08-22T08:44:58.750+02:00"),
        (TimeSource.DEVICE_LOCAL, timezone(timedelta(hours=-5)), "2026-08-22T08:44:58.750-05:00"),
        (TimeSource.DEVICE_UTC, UTC, "2026-08-22T08:44:58.750+00:00"),
        (TimeSource.GATEWAY_RECEIPT, UTC, "2026-08-22T08:44:58.750+00:00"),
    ],
)
def test_device_time_gets_the_reading_zone_or_utc(
    source: TimeSource, zone: timezone, expected: str
) -> None:
    device_time = datetime(2026, 8, 22, 8, 42, 36)
    effective = (
        datetime(2026, 8, 22, 6, 43, 1, tzinfo=UTC)
        if source is TimeSource.GATEWAY_RECEIPT
        else device_time.replace(tzinfo=zone)
    )
    r = reading(device_time=device_time, effective_time=effective, time_source=source)
    entries = map_reading(with_clock(r), PATIENT, GATEWAY)
    validate_entries(entries)
    assert the_coincident(entries)["resource"]["valueDateTime"] == expected


def test_named_zone_uses_the_offset_of_the_device_wall_time() -> None:
    paris = ZoneInfo("Europe/Paris")
    device_time = datetime(2026, 1, 15, 9, 0, 0)
    r = reading(device_time=device_time, effective_time=device_time.replace(tzinfo=paris))
    clock = ClockCheck(
        device_time=datetime(2026, 1, 15, 9, 30, 0),
        gateway_time=datetime(2026, 1, 15, 8, 31, 0, tzinfo=UTC),
    )
    coincident = the_coincident(map_reading(with_clock(r, clock), PATIENT, GATEWAY))["resource"]
    assert coincident["valueDateTime"] == "2026-01-15T09:30:00.000+01:00"
    assert coincident["effectiveDateTime"] == "2026-01-15T08:31:00.000+00:00"


def test_time_fault_has_no_value_and_data_absent_reason_unknown() -> None:
    clock = ClockCheck(device_time=None, gateway_time=GATEWAY_TIME)
    entries = map_reading(with_clock(si_reading(), clock), PATIENT, GATEWAY)
    validate_entries(entries)
    coincident = the_coincident(entries)["resource"]
    assert "valueDateTime" not in coincident
    assert coincident["dataAbsentReason"] == {
        "coding": [{"system": DAR, "code": "unknown", "display": "Unknown"}]
    }
    assert coincident["effectiveDateTime"] == "2026-08-22T06:45:10.125+00:00"
    # same clock check, same identity: the faulted and the good check share a key only by time
    good = the_coincident(map_reading(with_clock(si_reading()), PATIENT, GATEWAY))
    assert the_coincident(entries)["fullUrl"] == good["fullUrl"]


def test_reading_without_device_time_gets_no_coincident_time_stamp() -> None:
    received = datetime(2026, 8, 22, 6, 43, 1, 250_000, tzinfo=UTC)
    r = reading(
        device_time=None,
        effective_time=received,
        time_source=TimeSource.GATEWAY_RECEIPT,
        received_at=received,
    )
    entries = map_reading(with_clock(r), PATIENT, GATEWAY)
    assert entries == map_reading(r, PATIENT, GATEWAY)


def test_one_session_shares_one_coincident_time_stamp() -> None:
    first = with_clock(reading(kg("65.700"), device_time=datetime(2026, 8, 20, 7, 0, 0)))
    second = with_clock(reading(kg("65.900"), device_time=datetime(2026, 8, 21, 7, 5, 0)))
    a = map_reading(first, PATIENT, GATEWAY)
    b = map_reading(second, PATIENT, GATEWAY)
    assert the_coincident(a) == the_coincident(b)
    bundle = transaction_bundle(a + b)
    assert len(bundle["entry"]) == 5  # PHG, PHD, weight, coincident, weight
    validate_entries(bundle["entry"])
    # a retry gives byte-identical output
    again = json.dumps(transaction_bundle(map_reading(first, PATIENT, GATEWAY)), default=str)
    assert again == json.dumps(transaction_bundle(a), default=str)


def test_another_session_gives_another_coincident_time_stamp() -> None:
    later = replace(CLOCK, gateway_time=GATEWAY_TIME + timedelta(days=1))
    a = the_coincident(map_reading(with_clock(si_reading()), PATIENT, GATEWAY))
    b = the_coincident(map_reading(with_clock(si_reading(), later), PATIENT, GATEWAY))
    assert a["fullUrl"] != b["fullUrl"]
    assert a["resource"]["identifier"] != b["resource"]["identifier"]


def test_coincident_time_stamp_does_not_depend_on_the_patient() -> None:
    from tests.mappers.factories import OTHER_PATIENT

    a = the_coincident(map_reading(with_clock(si_reading()), PATIENT, GATEWAY))
    b = the_coincident(map_reading(with_clock(si_reading()), OTHER_PATIENT, GATEWAY))
    assert a == b
    assert PATIENT.value not in json.dumps(a, default=str)


@pytest.mark.parametrize(
    "clock",
    [
        ClockCheck(device_time=datetime(2026, 8, 22, 8, 44), gateway_time=datetime(2026, 8, 22, 6)),
        ClockCheck(device_time=datetime(2026, 8, 22, 8, 44, tzinfo=UTC), gateway_time=GATEWAY_TIME),
        ClockCheck(
            device_time=datetime(2026, 8, 22, 8, 44),
            gateway_time=datetime(2026, 8, 22, 6, tzinfo=timezone(timedelta(seconds=30))),
        ),
    ],
)
def test_malformed_clock_checks_are_refused(clock: ClockCheck) -> None:
    with pytest.raises(MappingError):
        map_reading(with_clock(si_reading(), clock), PATIENT, GATEWAY)


# --- battery --------------------------------------------------------------------------------------


def test_battery_observation_shape() -> None:
    entries = map_reading(replace(reading(), battery=85), PATIENT, GATEWAY)
    validate_entries(entries)
    assert len(entries) == 4
    entry = entries[-1]
    battery = entry["resource"]
    value = f"74E8FFFEFF051C00-67996-{RECEIPT_TS}"
    assert battery == {
        "resourceType": "Observation",
        "meta": {"profile": [NUMERIC]},
        "extension": [{"url": GATEWAY_EXT, "valueReference": {"reference": entries[0]["fullUrl"]}}],
        "identifier": [{"system": OBS_ID, "value": value}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories",
                        "code": "phd",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": MDC, "code": "67996", "display": "MDC_ATTR_VAL_BATT_CHARGE"}]
        },
        "subject": {"reference": entries[1]["fullUrl"]},  # the PHD, no patient
        "effectiveDateTime": "2026-08-22T06:43:01+00:00",
        "valueQuantity": {"value": Decimal("85"), "unit": "%", "system": UCUM, "code": "%"},
        "device": {"reference": entries[1]["fullUrl"]},
    }
    assert entry["request"]["ifNoneExist"] == f"identifier={OBS_ID}|{value}"
    # the weight Observation is exactly what it is without a battery level
    assert entries[:3] == map_reading(reading(), PATIENT, GATEWAY)


def test_battery_is_stable_across_retries_and_patients() -> None:
    from tests.mappers.factories import OTHER_PATIENT

    r = replace(reading(), battery=12)
    assert the_battery(map_reading(r, PATIENT, GATEWAY)) == the_battery(
        map_reading(r, PATIENT, GATEWAY)
    )
    assert the_battery(map_reading(r, PATIENT, GATEWAY)) == the_battery(
        map_reading(r, OTHER_PATIENT, GATEWAY)
    )
    later = replace(r, received_at=r.received_at + timedelta(microseconds=1))
    assert (
        the_battery(map_reading(later, PATIENT, GATEWAY))["fullUrl"]
        != (the_battery(map_reading(r, PATIENT, GATEWAY))["fullUrl"])
    )


@pytest.mark.parametrize("level", [0, 100])
def test_battery_bounds(level: int) -> None:
    entries = map_reading(replace(reading(), battery=level), PATIENT, GATEWAY)
    validate_entries(entries)
    assert the_battery(entries)["resource"]["valueQuantity"]["value"] == Decimal(level)


@pytest.mark.parametrize("level", [-1, 101, True, 85.0, "85"])
def test_bad_battery_levels_are_refused(level: Any) -> None:
    with pytest.raises(MappingError):
        map_reading(replace(reading(), battery=level), PATIENT, GATEWAY)


def test_everything_at_once_is_valid_and_ordered() -> None:
    from tests.mappers.factories import quantity

    r = replace(
        reading(quantity("glucose", "5.4", "mmol/L"), kind="blood-glucose"),
        context=(("meal", "preprandial"), ("specimen", "capillary-plasma")),
        status=("questionable-measurement", "device-battery-low"),
        clock=CLOCK,
        battery=77,
    )
    entries = map_reading(r, PATIENT, GATEWAY)
    validate_entries(entries)
    profiles = [e["resource"]["meta"]["profile"][-1].rsplit("/", 1)[1] for e in entries]
    assert profiles == [
        "PhgDevice",
        "PhdDevice",
        "PhdNumericObservation",
        "PhdCodedEnumerationObservation",
        "PhdBitsEnumerationObservation",
        "PhdCoincidentTimeStampObservation",
        "PhdNumericObservation",
    ]
    urls = [e["fullUrl"] for e in entries]
    assert len(set(urls)) == len(urls)
    assert map_reading(r, PATIENT, GATEWAY) == entries
