"""FHIR building blocks every mapper module shares: codings, Observation heads, entries, times.

Plain ``dict``s only (the hot path never touches fhir.resources). Nothing here knows a reading
kind: ``mappers.phd`` orchestrates, ``mappers.status`` / ``mappers.context`` /
``mappers.device_status`` build the extra Observations with these pieces.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from drivers.models import PatientRef
from mappers import codes
from mappers.errors import MappingError

# Never change: every fullUrl ever sent derives from it.
_FULL_URL_NAMESPACE = uuid.UUID("04da8ce2-bffb-43a7-a85d-ddaf1a237736")

_NAMESPACE_BYTES = _FULL_URL_NAMESPACE.bytes
_EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MINUTE = timedelta(minutes=1)
_VARIANT = "89ab89ab89ab89ab"  # hex digit of an RFC 4122 variant byte, by its top nibble


@dataclass(frozen=True, slots=True)
class ObservationContext:
    """What every patient Observation of one reading shares."""

    patient: PatientRef
    identifier_of: Callable[[int], str]  # MDC code -> PHD conditional-create identifier
    effective: str
    gateway_url: str
    device_url: str
    body_site: codes.BodySite | None
    coincident_url: str | None = None  # the reading's PhdCoincidentTimeStampObservation, if any


# --- codings --------------------------------------------------------------------------------------


def mdc_coding(term: codes.Mdc) -> dict[str, Any]:
    return {"system": codes.MDC_SYSTEM, "code": str(term.code), "display": term.ref_id}


def loinc_coding(loinc: codes.Loinc) -> dict[str, Any]:
    return {"system": codes.LOINC_SYSTEM, "code": loinc.code, "display": loinc.display}


def absent_reason(code: str, display: str) -> dict[str, Any]:
    return {
        "coding": [{"system": codes.DATA_ABSENT_REASON_SYSTEM, "code": code, "display": display}]
    }


def phd_category() -> dict[str, Any]:
    return {"coding": [{"system": codes.PHD_CATEGORY_SYSTEM, "code": codes.PHD_CATEGORY_CODE}]}


# --- Observations ---------------------------------------------------------------------------------


def observation_head(
    profiles: list[str],
    code: list[dict[str, Any]],
    identifier: str,
    context: ObservationContext,
    *,
    vital_sign: bool,
) -> dict[str, Any]:
    """Patient Observation elements up to ``effectiveDateTime``, in FHIR element order."""
    extension = [
        {
            "url": codes.GATEWAY_DEVICE_EXTENSION,
            "valueReference": {"reference": context.gateway_url},
        }
    ]
    if context.coincident_url is not None:
        extension.append(
            {
                "url": codes.COINCIDENT_TIME_STAMP_EXTENSION,
                "valueReference": {"reference": context.coincident_url},
            }
        )
    return {
        "resourceType": "Observation",
        "meta": {"profile": profiles},
        "extension": extension,
        "identifier": [{"system": codes.OBSERVATION_IDENTIFIER_SYSTEM, "value": identifier}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": codes.OBSERVATION_CATEGORY_SYSTEM,
                        "code": codes.VITAL_SIGNS_CATEGORY,
                    }
                ]
            },
            {"coding": [{"system": codes.PHD_CATEGORY_SYSTEM, "code": codes.PHD_CATEGORY_CODE}]},
        ]
        if vital_sign
        else [phd_category()],
        "code": {"coding": code},
        "subject": {
            "identifier": {"system": context.patient.system, "value": context.patient.value}
        },
        "effectiveDateTime": context.effective,
    }


# Observation elements in FHIR R4 order, for resources assembled out of order (``reorder``).
_OBSERVATION_ORDER = (
    "resourceType",
    "meta",
    "extension",
    "identifier",
    "status",
    "category",
    "code",
    "subject",
    "effectiveDateTime",
    "valueQuantity",
    "valueCodeableConcept",
    "valueDateTime",
    "dataAbsentReason",
    "interpretation",
    "note",
    "bodySite",
    "device",
    "derivedFrom",
    "component",
)
_RANK = {key: rank for rank, key in enumerate(_OBSERVATION_ORDER)}


def reorder(resource: dict[str, Any]) -> None:
    """Put an Observation's elements back in FHIR order, in place (unknown keys go last)."""
    ordered = sorted(resource.items(), key=lambda item: _RANK.get(item[0], len(_RANK)))
    resource.clear()
    resource.update(ordered)


def mark_test_data(resource: dict[str, Any]) -> None:
    """``meta.security`` v3-ActReason HTEST (PhdBaseObservation ``meta.security[PhdHtest]``)."""
    code, display = codes.HTEST
    resource["meta"]["security"] = [
        {"system": codes.ACT_REASON_SYSTEM, "code": code, "display": display}
    ]


def references(urls: Iterable[str]) -> list[dict[str, Any]]:
    return [{"reference": url} for url in urls]


# --- bundle entries -------------------------------------------------------------------------------


def entry(resource: dict[str, Any], system: str, value: str) -> dict[str, Any]:
    """Conditional-create transaction entry (``POST`` + ``ifNoneExist`` on the identifier)."""
    resource_type = resource["resourceType"]
    full_url, if_none_exist = entry_keys(resource_type, system, value)
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource_type, "ifNoneExist": if_none_exist},
    }


def observation_entry(resource: dict[str, Any]) -> dict[str, Any]:
    """``entry`` keyed on the Observation's (single) PHD identifier."""
    identifier = resource["identifier"][0]
    return unique_entry(resource, identifier["system"], identifier["value"])


def unique_entry(resource: dict[str, Any], system: str, value: str) -> dict[str, Any]:
    """``entry`` for an identifier seen once (an Observation's): no cache to fill and evict."""
    resource_type = resource["resourceType"]
    full_url, if_none_exist = _entry_keys(resource_type, system, value)
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource_type, "ifNoneExist": if_none_exist},
    }


# The same devices come back with every reading: remember their strings (uuid5, quoting).
@functools.lru_cache(maxsize=256)
def entry_keys(resource_type: str, system: str, value: str) -> tuple[str, str]:
    """``(fullUrl, ifNoneExist)`` of a resource identified by ``system|value``."""
    return _entry_keys(resource_type, system, value)


def _entry_keys(resource_type: str, system: str, value: str) -> tuple[str, str]:
    return (
        full_url(resource_type, system, value),
        f"identifier={system}|{_percent_encode(_escape_search(value))}",
    )


def full_url(resource_type: str, system: str, value: str) -> str:
    """An entry's deterministic ``fullUrl``: UUIDv5 of ``<ResourceType>/<system>|<value>``."""
    return f"urn:uuid:{_uuid5(f'{resource_type}/{system}|{value}')}"


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(_FULL_URL_NAMESPACE, name))`` without the slow ``uuid.UUID`` object."""
    h = hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8")).hexdigest()
    # version 5 replaces the 13th hex digit; the variant (10xx) rewrites the 17th's top bits
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[int(h[16], 16)]}{h[17:20]}-{h[20:32]}"


_NOT_UNRESERVED = re.compile(r"[^A-Za-z0-9_.~-]")


_ASCII_PERCENT = {
    chr(code): f"%{code:02X}" for code in range(128) if _NOT_UNRESERVED.match(chr(code)) is not None
}


def _percent_encode(value: str) -> str:
    """Same result as ``urllib.parse.quote(value, safe="")``, without a Python loop per char
    (a regex substitution touches only the few reserved characters an identifier holds)."""
    return _NOT_UNRESERVED.sub(_quote_match, value)


def _quote_match(match: re.Match[str]) -> str:
    char = match.group()
    quoted = _ASCII_PERCENT.get(char)
    if quoted is not None:
        return quoted
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))


def search_token(system: str, value: str) -> str:
    """A token search value ``system|value`` with FHIR escaping (not yet percent-encoded)."""
    return f"{system}|{_escape_search(value)}"


def _escape_search(value: str) -> str:
    """FHIR search escaping of a token value: ``\\``, ``|``, ``,`` and ``$`` get a backslash."""
    for char in ("\\", "|", ",", "$"):
        value = value.replace(char, "\\" + char)
    return value


# --- times ----------------------------------------------------------------------------------------


def format_datetime(moment: datetime) -> str:
    """FHIR ``dateTime`` with seconds precision and the moment's own offset (UTC as ``+00:00``)."""
    _check_offset(moment)
    return moment.isoformat(timespec="seconds")


def format_datetime_ms(moment: datetime) -> str:
    """``format_datetime`` at millisecond precision (clock comparisons need sub-seconds)."""
    _check_offset(moment)
    return moment.isoformat(timespec="milliseconds")


def _check_offset(moment: datetime) -> None:
    offset = moment.utcoffset()
    if offset is None:
        raise MappingError("effective time has no UTC offset")
    if offset % _MINUTE:
        raise MappingError("effective time offset is not a whole number of minutes")


def seconds_since_2000(moment: datetime) -> str:
    """An aware moment as exact decimal seconds since 2000-01-01 UTC, microseconds kept.

    The identifier form of a gateway time (no float anywhere: ``840696181.250000``).
    """
    if moment.utcoffset() is None:
        raise MappingError("gateway time has no UTC offset")
    micros = (moment - _EPOCH_2000) // _MICROSECOND
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{fraction:06d}"
