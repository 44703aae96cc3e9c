"""Profile set ``phd``: a ``Reading`` as FHIR R4 (HL7 PHD IG 2.0 + R4 vital signs).

Reading kinds (``mappers.codes.KINDS``): ``weight`` (scale), ``blood-pressure`` (BP monitor) and
``body-temperature`` (thermometer).

Pure functions: no I/O, no clock, no randomness, no module state is written. The output is plain
``dict``s (numbers stay ``Decimal``); the same inputs always give byte-identical bundles, so a
retry or a crash replay sends exactly what was sent before.

``map_reading`` returns transaction-Bundle entries in this order: the PhgDevice (the gateway), the
PhdDevice (the sensor), then, for a blood-pressure reading, the PhdCompoundNumericObservation that
holds systolic/diastolic/mean, then one PhdNumericObservation per other quantity in reading order
(weight, height, BMI; the BP monitor's pulse rate; the body temperature). Every entry is a
conditional create (``POST`` + ``ifNoneExist`` on the resource's identifier) and its ``fullUrl`` is
``urn:uuid:`` + a UUIDv5 of ``<ResourceType>/<identifier system>|<identifier value>``, so the
temporary ids are deterministic too.

Decisions where the specifications are silent or disagree (see ``fhir-mapping.md`` §6):

* **Device key.** The PhdDevice is keyed on its SYSID identifier (EUI-64 from the DIS System ID,
  dashed) when the device has one, otherwise on its BTMAC identifier (the EUI-48 link address,
  dashed). PHD 2.0 allows a BTMAC-only device. We do *not* write PHD 1.1's all-zero SYSID
  ``00-00-00-00-00-00-00-00`` for devices without one: used as the conditional-create key it
  would merge every such device on the server into a single Device. The same choice makes the
  device part of the Observation identifier (``DeviceIdentity.key``) and the Device key agree.
  Caveat: the BTMAC key is only stable for a public or static-random address; drivers must hand
  us the identity address, never a rotating private one.
* **Unknown manufacturer / model.** PHD wants ``manufacturer`` and ``modelNumber`` 1..1. When the
  device did not tell us, the element carries only the ``data-absent-reason`` extension with
  ``unknown`` (FHIR's way to fill a required primitive) instead of a made-up string that a
  consumer could not tell from a real name. Likewise PHD 2.0 wants at least one ``version``
  entry: with no revision string at all we write the firmware revision as ``unknown``.
* **Serial and revisions** are written only when known. Device strings are cleaned of control
  characters (DIS strings often arrive NUL-padded) and trimmed; an empty result counts as unknown.
* **Observation identifier** (PHD 2.0 rule, no duration and no supplemental types for these
  quantities) is written on every Observation, also for readings without a device time (PHD
  deems it optional there): it is the idempotency key the outbox relies on, and the
  receipt-time timestamp part is still stable across retries of the stored reading.
* **ifNoneExist** values are escaped for FHIR search (``\\``, ``|``, ``,`` and ``$`` get a
  backslash) and then percent-encoded with ``quote(safe="")``; for ordinary identifiers the
  escaping changes nothing.
* **Special values** (NaN, +/-INF, NRes, reserved, "measurement unsuccessful") keep
  ``status = final`` with no value and a ``dataAbsentReason``; the unit is still checked.
* **effectiveDateTime** is ``Reading.effective_time`` at seconds precision with its own offset
  (``+00:00`` for UTC); a naive time, or an offset that is not a whole number of minutes, is a
  ``MappingError``.
* **Decimals** keep the device's exponent; a positive exponent is written as the plain integer.
* ``Reading.user_index``, ``flags``, ``sequence``, ``raw`` and ``profile_id`` are not mapped: the
  binding layer already turned the user index into ``patient``, and nothing else here is
  clinical. No ``note`` or free text is written.
* The patient is referenced by identifier only (``subject.identifier``); no Patient is created.
* The PhdDevice carries no clock or time-sync property: a legacy BLE scale reports none, and the
  gateway's own method is on the PhgDevice (MDC 68220).

Blood pressure (R4 ``bp`` + PhdCompoundNumericObservation, MDC 150020 / LOINC 85354-9):

* ``systolic``, ``diastolic`` and (optional) ``mean-arterial-pressure`` become the components,
  always in that order whatever the reading order; no ``value[x]`` on the Observation itself.
  The pulse rate (``pulse-rate``) is a separate numeric Observation (R4 ``heartrate``, MDC
  149546) with its own identifier, so it can be stored, de-duplicated and refused (MES) alone.
* R4 ``bp`` requires a systolic and a diastolic component: a reading that lacks either quantity is
  a ``MappingError`` (a driver bug: the Blood Pressure Measurement always carries all three). A
  special value keeps its component, with the component's own ``dataAbsentReason`` and no value.
* When *every* component is a special value the measurement as a whole failed: PHD puts a
  ``dataAbsentReason`` on the Observation and omits the components, but R4 ``bp`` still needs the
  two components. We do both halves that stay valid: the Observation gets a ``dataAbsentReason``
  (the components' common reason, or ``error`` when they differ) and keeps every component with
  its own reason. It is still uploaded (a failed measurement is information); MES uplinks drop
  value-less Observations anyway (spec §6.7).
* kPa is refused (``MappingError``), not converted: R4 ``bp`` fixes ``mm[Hg]`` and
  1 mmHg = 133.322387415 Pa has no finite decimal inverse, so any kPa -> mm[Hg] number would be a
  rounding we invented. Sending kPa under the ``bp`` profile would be invalid FHIR. Since nothing is
  returned partially, the pulse of such a reading is not sent either.

Body temperature (R4 ``bodytemp``, MDC 150364 / LOINC 8310-5): ``Cel`` and ``[degF]`` pass
through unchanged (both in R4 ``ucum-bodytemp``; no Fahrenheit conversion, which would not be
exact). The optional ``Reading.site`` (a name of
``codes.TEMPERATURE_SITES``, i.e. the Bluetooth Temperature Type) adds ``Observation.bodySite``
(SNOMED CT); the Observation code stays MDC_TEMP_BODY so the identifier never depends on the site.
A site for a kind that has none (weight, blood pressure) or an unknown site name is a
``MappingError``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from drivers.models import Absent, DeviceIdentity, GatewayInfo, PatientRef, Quantity, Reading
from mappers import codes
from mappers.errors import MappingError

__all__ = [
    "MappingError",
    "format_datetime",
    "map_reading",
    "observation_identifier",
    "primary_observation_code",
    "transaction_bundle",
]

# Never change: every fullUrl ever sent derives from it.
_FULL_URL_NAMESPACE = uuid.UUID("04da8ce2-bffb-43a7-a85d-ddaf1a237736")

# Characters deleted from device-supplied text: C0 controls, DEL and lone surrogates.
_UNPRINTABLE = dict.fromkeys([*range(0x20), 0x7F, *range(0xD800, 0xE000)])

_HEX = frozenset("0123456789ABCDEF")


# --- public API -----------------------------------------------------------------------------------


def observation_identifier(reading: Reading, patient: PatientRef, mdc_code: int) -> str:
    """PHD 2.0 conditional-create identifier: ``<device>-<patient>-<system>-<mdc>-<timestamp>``.

    ``<patient>-<system>`` is the patient identifier value then its system; ``<device>`` is the
    EUI-64 (or, lacking one, EUI-48) as upper-case hex without separators and ``<timestamp>`` the
    time as the device reported it (``Reading.timestamp_part``), never the corrected
    effective time: a retry, a replay or a second gateway yields the same string.
    """
    prefix, timestamp = _identifier_parts(reading, patient)
    return f"{prefix}{mdc_code}-{timestamp}"


def _identifier_parts(reading: Reading, patient: PatientRef) -> tuple[str, str]:
    """What every identifier of one reading shares (computed once per reading, not per code)."""
    return f"{reading.device.key}-{patient.value}-{patient.system}-", reading.timestamp_part


def primary_observation_code(reading: Reading) -> int:
    """MDC code of the first Observation ``map_reading`` writes for this reading.

    Its identifier (``observation_identifier(reading, patient, code)``) is the reading's
    idempotency key: the compound code (150020) for blood pressure, else the first quantity's.
    """
    kind = codes.kind_term(reading.kind)
    if kind.compound is not None:
        return kind.compound.mdc.code
    if not reading.quantities:
        raise MappingError("reading has no quantities")
    return _numeric_term(kind, reading.quantities[0].name).mdc.code


def map_reading(
    reading: Reading, patient: PatientRef, gateway: GatewayInfo
) -> list[dict[str, Any]]:
    """Transaction-Bundle entries for one reading: PhgDevice, PhdDevice, then its Observations.

    ``reading.site`` is where on the body a thermometer measured (``codes.TEMPERATURE_SITES``);
    ``Reading`` has no field for it yet.

    Raises ``MappingError`` for a reading that cannot be mapped (unknown quantity or kind, unit not
    allowed by the profile, missing systolic/diastolic, naive time, malformed address...). Nothing
    is returned partially.
    """
    _check_patient(patient)
    if not reading.quantities:
        raise MappingError("reading has no quantities")
    kind = codes.kind_term(reading.kind)
    body_site = _body_site(kind, reading.site)
    effective = format_datetime(reading.effective_time)
    gateway_entry = _cached_phg_entry(gateway)
    device_entry = _cached_phd_entry(reading.device, reading.kind)
    if gateway_entry["fullUrl"] == device_entry["fullUrl"]:
        raise MappingError("device and gateway have the same system id")
    entries = [gateway_entry, device_entry]
    prefix, timestamp = _identifier_parts(reading, patient)
    context = _Context(
        patient=patient,
        identifier_of=lambda mdc: f"{prefix}{mdc}-{timestamp}",
        effective=effective,
        gateway_url=gateway_entry["fullUrl"],
        device_url=device_entry["fullUrl"],
        body_site=body_site,
    )
    names: set[str] = set()
    for quantity in reading.quantities:
        if quantity.name in names:
            raise MappingError(f"quantity {quantity.name} appears twice in one reading")
        names.add(quantity.name)
    compound = kind.compound
    parts: dict[str, Quantity] = {}
    if compound is not None:
        part_names = {component.name for component in compound.components}
        parts = {q.name: q for q in reading.quantities if q.name in part_names}
        entries.append(_compound_entry(compound, parts, context))
    for quantity in reading.quantities:
        if quantity.name not in parts:
            term = _numeric_term(kind, quantity.name)
            entries.append(_observation_entry(term, quantity, context))
    return entries


def transaction_bundle(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Wrap entries in a ``transaction`` Bundle.

    Entries of several readings may be concatenated: an entry repeated verbatim (the same
    PhgDevice/PhdDevice for each reading) is kept once. Two *different* entries with the same
    ``fullUrl`` are a ``MappingError``, since a transaction must not hold both.
    """
    kept: dict[str, dict[str, Any]] = {}
    for entry in entries:
        url = entry["fullUrl"]
        previous = kept.get(url)
        if previous is None:
            kept[url] = entry
        elif previous != entry:
            raise MappingError("two different bundle entries share one fullUrl")
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(kept.values())}


def format_datetime(moment: datetime) -> str:
    """FHIR ``dateTime`` with seconds precision and the moment's own offset (UTC as ``+00:00``)."""
    offset = moment.utcoffset()
    if offset is None:
        raise MappingError("effective time has no UTC offset")
    if offset % timedelta(minutes=1):
        raise MappingError("effective time offset is not a whole number of minutes")
    return moment.replace(microsecond=0).isoformat()


# --- observations ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    """What every Observation of one reading shares."""

    patient: PatientRef
    identifier_of: Callable[[int], str]
    effective: str
    gateway_url: str
    device_url: str
    body_site: codes.BodySite | None


def _numeric_term(kind: codes.KindTerm, name: str) -> codes.QuantityTerm:
    try:
        return kind.numeric[name]
    except KeyError:
        raise MappingError(f"unknown quantity name {name!r} for kind {kind.kind}") from None


def _body_site(kind: codes.KindTerm, site: str | None) -> codes.BodySite | None:
    if site is None:
        return None
    try:
        return kind.sites[site]
    except KeyError:
        raise MappingError(f"body site {site!r} is not known for kind {kind.kind}") from None


def _observation_entry(
    term: codes.QuantityTerm, quantity: Quantity, context: _Context
) -> dict[str, Any]:
    identifier = context.identifier_of(term.mdc.code)
    resource = _observation_head(
        term.profile,
        codes.PHD_NUMERIC_OBSERVATION_PROFILE,
        term.mdc,
        term.loinc,
        identifier,
        context,
    )
    resource.update(_value_or_absent(quantity, term.units))
    _add_site_and_device(resource, context)
    return _entry(resource, codes.OBSERVATION_IDENTIFIER_SYSTEM, identifier)


def _compound_entry(
    term: codes.CompoundTerm, parts: dict[str, Quantity], context: _Context
) -> dict[str, Any]:
    components: list[dict[str, Any]] = []
    reasons: list[dict[str, Any]] = []
    for component in term.components:
        quantity = parts.get(component.name)
        if quantity is None:
            if component.required:
                raise MappingError(f"{term.name} reading has no {component.name} quantity")
            continue
        coding = [_mdc_coding(component.mdc)]
        if component.loinc is not None:
            coding.append(_loinc_coding(component.loinc))
        value = _value_or_absent(quantity, term.units)
        if "dataAbsentReason" in value:
            reasons.append(value["dataAbsentReason"])
        components.append({"code": {"coding": coding}, **value})
    identifier = context.identifier_of(term.mdc.code)
    resource = _observation_head(
        term.profile,
        codes.PHD_COMPOUND_NUMERIC_OBSERVATION_PROFILE,
        term.mdc,
        term.loinc,
        identifier,
        context,
    )
    if len(reasons) == len(components):  # every component is a special value
        resource["dataAbsentReason"] = _overall_reason(reasons)
    _add_site_and_device(resource, context)
    resource["component"] = components
    return _entry(resource, codes.OBSERVATION_IDENTIFIER_SYSTEM, identifier)


def _overall_reason(reasons: list[dict[str, Any]]) -> dict[str, Any]:
    """The components' common data-absent reason, or ``error`` when they disagree."""
    first = reasons[0]
    if all(reason == first for reason in reasons):
        return copy.deepcopy(first)
    return _absent_reason(*codes.ERROR_REASON)


def _observation_head(
    profile: str,
    phd_profile: str,
    mdc: codes.Mdc,
    loinc: codes.Loinc,
    identifier: str,
    context: _Context,
) -> dict[str, Any]:
    """Observation elements up to ``effectiveDateTime``, in FHIR element order."""
    return {
        "resourceType": "Observation",
        "meta": {"profile": [profile, phd_profile]},
        "extension": [
            {
                "url": codes.GATEWAY_DEVICE_EXTENSION,
                "valueReference": {"reference": context.gateway_url},
            }
        ],
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
        ],
        "code": {"coding": [_mdc_coding(mdc), _loinc_coding(loinc)]},
        "subject": {
            "identifier": {"system": context.patient.system, "value": context.patient.value}
        },
        "effectiveDateTime": context.effective,
    }


def _add_site_and_device(resource: dict[str, Any], context: _Context) -> None:
    if context.body_site is not None:
        site = context.body_site
        resource["bodySite"] = {
            "coding": [{"system": codes.SNOMED_SYSTEM, "code": site.code, "display": site.display}]
        }
    resource["device"] = {"reference": context.device_url}


def _loinc_coding(loinc: codes.Loinc) -> dict[str, Any]:
    return {"system": codes.LOINC_SYSTEM, "code": loinc.code, "display": loinc.display}


def _value_or_absent(quantity: Quantity, units: frozenset[str]) -> dict[str, Any]:
    """``valueQuantity`` in a unit of ``units``, or the ``dataAbsentReason`` of a special value."""
    if quantity.absent is None:
        if quantity.value is None:
            raise MappingError(f"{quantity.name}: neither a value nor an absent reason")
        value, unit = codes.convert_to(units, quantity.name, quantity.value, quantity.unit)
        return {
            "valueQuantity": {
                "value": value,
                "unit": codes.UCUM_DISPLAY.get(unit, unit),
                "system": codes.UCUM_SYSTEM,
                "code": unit,
            }
        }
    if quantity.value is not None:
        raise MappingError(f"{quantity.name}: both a value and an absent reason")
    codes.unit_for(units, quantity.name, quantity.unit)  # a wrong unit is a driver bug either way
    try:
        code, display = codes.DATA_ABSENT_REASONS[Absent(quantity.absent)]
    except (ValueError, KeyError):
        raise MappingError(f"{quantity.name}: unknown absent reason") from None
    return {"dataAbsentReason": _absent_reason(code, display)}


def _absent_reason(code: str, display: str) -> dict[str, Any]:
    return {
        "coding": [{"system": codes.DATA_ABSENT_REASON_SYSTEM, "code": code, "display": display}]
    }


# --- devices --------------------------------------------------------------------------------------


# Device entries repeat with every reading of a device and cost as much as the Observations: they
# are built once per (frozen) input and shared, deeply immutable so no caller can alter another's.
class FrozenDict(dict[str, Any]):
    """A dict that refuses every change (orjson and fhir.resources read it as a dict)."""

    def _refuse(self, *_args: Any, **_kwargs: Any) -> Any:
        raise TypeError("mapped device entries are shared between bundles and immutable")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {key: copy.deepcopy(value, memo) for key, value in self.items()}


class FrozenList(list[Any]):
    """A list that refuses every change."""

    def _refuse(self, *_args: Any, **_kwargs: Any) -> Any:
        raise TypeError("mapped device entries are shared between bundles and immutable")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [copy.deepcopy(value, memo) for value in self]


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return FrozenDict({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return FrozenList(_freeze(item) for item in value)
    return value


@functools.lru_cache(maxsize=256)
def _cached_phd_entry(device: DeviceIdentity, reading_kind: str) -> dict[str, Any]:
    return _freeze(_phd_entry(device, reading_kind))  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=16)
def _cached_phg_entry(gateway: GatewayInfo) -> dict[str, Any]:
    return _freeze(_phg_entry(gateway))  # type: ignore[no-any-return]


def _phd_entry(device: DeviceIdentity, reading_kind: str) -> dict[str, Any]:
    kind = codes.specialization(reading_kind)
    identifiers = [_btmac_identifier(device)]
    if device.system_id:
        identifiers.insert(0, _sysid_identifier(device.system_id))
    key = identifiers[0]  # SYSID when known, else BTMAC

    resource: dict[str, Any] = {
        "resourceType": "Device",
        "meta": {"profile": [codes.PHD_DEVICE_PROFILE]},
        "identifier": identifiers,
    }
    resource.update(_required_text("manufacturer", device.manufacturer))
    serial = _clean_text(device.serial)
    if serial is not None:
        resource["serialNumber"] = serial
    resource.update(_required_text("modelNumber", device.model))
    resource["type"] = {"coding": [_mdc_coding(codes.PHD_DEVICE_TYPE)]}
    resource["specialization"] = [
        {
            "systemType": {"coding": [_mdc_coding(kind)]},
            "version": codes.SPECIALIZATION_VERSION,
        }
    ]
    resource["version"] = _device_versions(device)
    return _entry(resource, key["system"], key["value"])


def _device_versions(device: DeviceIdentity) -> list[dict[str, Any]]:
    versions = [
        _version(kind, text)
        for kind, raw in (
            (codes.VERSION_FW, device.firmware),
            (codes.VERSION_SW, device.software),
            (codes.VERSION_HW, device.hardware),
        )
        if (text := _clean_text(raw)) is not None
    ]
    return versions or [_version(codes.VERSION_FW, None)]


def _phg_entry(gateway: GatewayInfo) -> dict[str, Any]:
    sysid = _sysid_identifier(gateway.system_id)
    method = codes.time_sync_method(gateway.time_sync)
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "meta": {"profile": [codes.PHG_DEVICE_PROFILE]},
        "identifier": [sysid],
        "manufacturer": codes.GATEWAY_MANUFACTURER,
        "modelNumber": codes.GATEWAY_MODEL,
        "type": {"coding": [_mdc_coding(codes.PHG_DEVICE_TYPE)]},
        "specialization": [
            {
                "systemType": {"coding": [_mdc_coding(codes.GENERIC_SPECIALIZATION)]},
                "version": codes.SPECIALIZATION_VERSION,
            }
        ],
        "version": [_version(codes.VERSION_SW, _clean_text(gateway.software_version))],
        "property": [
            {
                "type": {"coding": [_mdc_coding(codes.TIME_SYNC_PROTOCOL)]},
                "valueCode": [{"coding": [_mdc_coding(method)]}],
            }
        ],
    }
    return _entry(resource, sysid["system"], sysid["value"])


def _sysid_identifier(system_id: str) -> dict[str, Any]:
    return {
        "type": _identifier_type(codes.SYSID_TYPE_CODE, codes.SYSID_TYPE_DISPLAY),
        "system": codes.SYSID_SYSTEM,
        "value": _dashed_hex(system_id, 16, "system id"),
    }


def _btmac_identifier(device: DeviceIdentity) -> dict[str, Any]:
    return {
        "type": _identifier_type(codes.BTMAC_TYPE_CODE, codes.BTMAC_TYPE_DISPLAY),
        "system": codes.BTMAC_SYSTEM,
        "value": _dashed_hex(device.address, 12, "Bluetooth address"),
    }


def _identifier_type(code: str, display: str) -> dict[str, Any]:
    return {
        "coding": [{"system": codes.CONTINUA_DEVICE_IDENTIFIERS, "code": code, "display": display}]
    }


def _dashed_hex(text: str, digits: int, what: str) -> str:
    """``aa:bb:...`` / ``AABB...`` -> ``AA-BB-...`` after checking it is ``digits`` hex digits."""
    bare = text.replace(":", "").replace("-", "").upper()
    if len(bare) != digits or not _HEX.issuperset(bare):
        raise MappingError(f"{what} is not {digits} hex digits")
    return "-".join(bare[i : i + 2] for i in range(0, digits, 2))


def _version(kind: codes.Mdc, text: str | None) -> dict[str, Any]:
    version: dict[str, Any] = {"type": {"coding": [_mdc_coding(kind)]}}
    version.update(_required_text("value", text))
    return version


def _required_text(element: str, raw: str | None) -> dict[str, Any]:
    """``{element: text}``, or the FHIR ``_element`` carrying data-absent-reason ``unknown``."""
    text = _clean_text(raw)
    if text is not None:
        return {element: text}
    return {
        "_" + element: {
            "extension": [
                {"url": codes.DATA_ABSENT_REASON_EXTENSION, "valueCode": codes.UNKNOWN_REASON[0]}
            ]
        }
    }


def _clean_text(raw: str | None) -> str | None:
    if raw is None:
        return None
    text = raw.translate(_UNPRINTABLE).strip()
    return text or None


# --- shared pieces --------------------------------------------------------------------------------


def _mdc_coding(term: codes.Mdc) -> dict[str, Any]:
    return {"system": codes.MDC_SYSTEM, "code": str(term.code), "display": term.ref_id}


def _entry(resource: dict[str, Any], system: str, value: str) -> dict[str, Any]:
    resource_type = resource["resourceType"]
    full_url, if_none_exist = _entry_keys(resource_type, system, value)
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource_type, "ifNoneExist": if_none_exist},
    }


# The same devices come back with every reading: remember their strings (uuid5, quoting).
@functools.lru_cache(maxsize=256)
def _entry_keys(resource_type: str, system: str, value: str) -> tuple[str, str]:
    full_url = f"urn:uuid:{_uuid5(f'{resource_type}/{system}|{value}')}"
    return full_url, f"identifier={system}|{_percent_encode(_escape_search(value))}"


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(_FULL_URL_NAMESPACE, name))`` without the slow ``uuid.UUID`` object."""
    digest = bytearray(hashlib.sha1(_FULL_URL_NAMESPACE.bytes + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NOT_UNRESERVED = re.compile(r"[^A-Za-z0-9_.~-]")


_ASCII_PERCENT = {
    code: f"%{code:02X}" for code in range(128) if _NOT_UNRESERVED.match(chr(code)) is not None
}


def _percent_encode(value: str) -> str:
    """Same result as ``urllib.parse.quote(value, safe="")``, without a Python loop per char."""
    if value.isascii():
        return value.translate(_ASCII_PERCENT)
    return _NOT_UNRESERVED.sub(
        lambda m: "".join(f"%{byte:02X}" for byte in m.group().encode("utf-8")), value
    )


def _escape_search(value: str) -> str:
    """FHIR search escaping of a token value: ``\\``, ``|``, ``,`` and ``$`` get a backslash."""
    for char in ("\\", "|", ",", "$"):
        value = value.replace(char, "\\" + char)
    return value


def _check_patient(patient: PatientRef) -> None:
    if not patient.system or any(c.isspace() for c in patient.system):
        raise MappingError("patient identifier system is empty or contains whitespace")
    if not patient.value or patient.value != patient.value.strip():
        raise MappingError("patient identifier value is empty or padded with whitespace")
