"""Small hand-built FHIR transaction Bundles for uplink tests (no dependency on mappers/).

Shape: a PHD Device (the scale), the gateway Device, and one Observation referencing both by
``urn:uuid`` and naming the patient by ``subject.identifier``. Decimals are written with their
exact text (``Decimal("65.700")`` -> ``65.700``).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import orjson

MDC = "urn:iso:std:iso:11073:10101"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SYSID = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
OBSERVATION_ID_SYSTEM = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
PATIENT_SYSTEM = "urn:oid:1.2.250.1.213.1.4.10"
GATEWAY_EXTENSION = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"

SCALE_EUI64 = "FE-ED-AB-EE-DE-AD-77-C3"
GATEWAY_EUI64 = "00-1B-DC-FF-FE-00-00-01"
PATIENT = "0123456789"

WEIGHT = {"mdc": "188736", "loinc": "29463-7", "unit": "kg"}
HEART_RATE = {"mdc": "149546", "loinc": "8867-4", "unit": "/min"}


def dumps(value: Any) -> bytes:
    """JSON bytes; ``Decimal`` written as its own text, never through a float."""

    def exact(obj: Any) -> Any:
        if isinstance(obj, Decimal):
            return orjson.Fragment(str(obj))
        raise TypeError(type(obj).__name__)

    return orjson.dumps(value, default=exact)


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def if_none_exist(system: str, value: str) -> str:
    """A token search: FHIR search escaping of the value, then percent-encoding."""
    for char in ("\\", "|", ",", "$"):
        value = value.replace(char, "\\" + char)
    return f"identifier={system}|{quote(value, safe='')}"


def device_entry(eui64: str, *, full_url: str | None = None) -> dict[str, Any]:
    return {
        "fullUrl": full_url or urn(),
        "resource": {
            "resourceType": "Device",
            "identifier": [{"system": SYSID, "value": eui64}],
        },
        "request": {"method": "POST", "url": "Device", "ifNoneExist": if_none_exist(SYSID, eui64)},
    }


def observation_entry(
    *,
    identifier: str,
    value: Decimal,
    device_url: str,
    gateway_url: str,
    effective: str = "2024-03-01T07:30:00+01:00",
    code: dict[str, str] = WEIGHT,
    patient: str = PATIENT,
    full_url: str | None = None,
) -> dict[str, Any]:
    return {
        "fullUrl": full_url or urn(),
        "resource": {
            "resourceType": "Observation",
            "identifier": [{"system": OBSERVATION_ID_SYSTEM, "value": identifier}],
            "status": "final",
            "code": {
                "coding": [
                    {"system": MDC, "code": code["mdc"]},
                    {"system": LOINC, "code": code["loinc"]},
                ]
            },
            "subject": {"identifier": {"system": PATIENT_SYSTEM, "value": patient}},
            "effectiveDateTime": effective,
            "valueQuantity": {
                "value": value,
                "unit": code["unit"],
                "system": UCUM,
                "code": code["unit"],
            },
            "device": {"reference": device_url},
            "extension": [{"url": GATEWAY_EXTENSION, "valueReference": {"reference": gateway_url}}],
        },
        "request": {
            "method": "POST",
            "url": "Observation",
            "ifNoneExist": if_none_exist(OBSERVATION_ID_SYSTEM, identifier),
        },
    }


def bundle(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def reading_bundle(
    identifier: str,
    value: Decimal = Decimal("65.700"),
    *,
    device: str = SCALE_EUI64,
    effective: str = "2024-03-01T07:30:00+01:00",
    code: dict[str, str] = WEIGHT,
    patient: str = PATIENT,
) -> dict[str, Any]:
    """Scale Device + gateway Device + one Observation, as a dict (mutate it, then ``dumps``)."""
    scale, gateway = device_entry(device), device_entry(GATEWAY_EUI64)
    observation = observation_entry(
        identifier=identifier,
        value=value,
        device_url=scale["fullUrl"],
        gateway_url=gateway["fullUrl"],
        effective=effective,
        code=code,
        patient=patient,
    )
    return bundle(scale, gateway, observation)


def reading_body(identifier: str, value: Decimal = Decimal("65.700"), **options: Any) -> bytes:
    return dumps(reading_bundle(identifier, value, **options))
