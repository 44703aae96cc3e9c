"""Profile set ``phd``: a ``Reading`` as FHIR R4 (HL7 PHD IG 2.0 + R4 vital signs).

Reading kinds (``mappers.codes.KINDS``): ``weight`` (scale), ``blood-pressure`` (BP monitor),
``body-temperature`` (thermometer), ``blood-glucose`` (glucose meter), ``cgm`` (continuous glucose
monitor), ``spo2`` (pulse oximeter) and ``body-composition`` (body composition analyser).

Besides its quantities a reading may carry ``context`` (``mappers.context``: glucose specimen and
coded context Observations), ``status`` (``mappers.status``: measurement-status conditions and the
BITS Observation), ``clock`` and ``battery`` (``mappers.device_status``: coincident time stamp and
battery level, device data with the PhdDevice as subject). A reading with none of them takes the
same path as before they existed and pays nothing for them.

Pure functions: no I/O, no clock, no randomness, no module state is written. The output is plain
``dict``s (numbers stay ``Decimal``); the same inputs always give byte-identical bundles, so a
retry or a crash replay sends exactly what was sent before.

``map_reading`` returns transaction-Bundle entries in this order: the PhgDevice (the gateway), the
PhdDevice (the sensor), then, for a blood-pressure reading, the PhdCompoundNumericObservation that
holds systolic/diastolic/mean, then one PhdNumericObservation per other quantity in reading order
(weight, height, BMI; the BP monitor's pulse rate; the body temperature...), then the coded
context Observations, the BITS status Observation, the coincident time stamp and the battery
level (each only when the reading has them). Every entry is a
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
  clinical. No ``note`` or free text is written, except the fixed text naming a context value
  that has no confirmed MDC code (``mappers.context``, e.g. "Meal context: bedtime").
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

Glucose (``blood-glucose``, ``cgm``): not a vital sign, so PhdNumericObservation with the PHD
category only (as the PHD glucose example; not ``laboratory`` either, which FHIR defines as
results produced by a laboratory). The MDC/LOINC codes depend on the specimen context and on the
unit (``mg/dL`` or ``mmol/L``, never converted: a mmol/L -> mg/dL factor is a rounding we would
invent); see ``codes.GLUCOSE_SPECIMENS``. Pulse oximeter (``spo2``): SpO2 under R4 ``oxygensat``
(LOINC 2708-6 then 59408-5), its pulse rate under R4 ``heartrate`` with the oximeter's own MDC code
149530. Body composition: weight/height/BMI exactly as the scale, the analyser's own quantities as
PHD-only numerics. Quantities without a confirmed code (``KindTerm.unmapped``) are refused with a
``MappingError`` that names them.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from drivers.models import Absent, DeviceIdentity, GatewayInfo, PatientRef, Quantity, Reading
from mappers import codes
from mappers.context import context_entries, parse_context, reading_specimen
from mappers.device_status import battery_entry, coincident_entry
from mappers.errors import MappingError
from mappers.resources import _FULL_URL_NAMESPACE as _FULL_URL_NAMESPACE
from mappers.resources import (
    ObservationContext,
    absent_reason,
    entry,
    format_datetime,
    loinc_coding,
    mdc_coding,
    observation_head,
    reorder,
    unique_entry,
)
from mappers.resources import _percent_encode as _percent_encode
from mappers.resources import _uuid5 as _uuid5
from mappers.status import NO_CONDITIONS, apply_conditions, bits_entry, parse_status

__all__ = [
    "MappingError",
    "format_datetime",
    "map_reading",
    "observation_identifier",
    "primary_observation_code",
    "transaction_bundle",
]

_HEX = frozenset("0123456789ABCDEF")

# Characters deleted from device-supplied text: C0 controls, DEL and lone surrogates.
_UNPRINTABLE = dict.fromkeys([*range(0x20), 0x7F, *range(0xD800, 0xE000)])


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
    idempotency key: the compound code (150020) for blood pressure, else the first quantity's
    (for glucose the code of the reading's specimen).
    """
    kind = codes.kind_term(reading.kind)
    if kind.compound is not None:
        return kind.compound.mdc.code
    if not reading.quantities:
        raise MappingError("reading has no quantities")
    name = reading.quantities[0].name
    if name == kind.specimen_of:
        specimen = reading_specimen(reading, kind)
        if specimen is not None:
            return specimen.mdc.code
    return _numeric_term(kind, name).mdc.code


def map_reading(
    reading: Reading, patient: PatientRef, gateway: GatewayInfo
) -> list[dict[str, Any]]:
    """Transaction-Bundle entries for one reading.

    In order: PhgDevice, PhdDevice, the measurement Observations (compound first, then one
    numeric per other quantity in reading order), the coded context Observations, the BITS
    status Observation, then the device-status ones (coincident time stamp, battery).

    Raises ``MappingError`` for a reading that cannot be mapped (unknown quantity, kind, context
    or status name, unit not allowed by the profile, missing systolic/diastolic, naive time,
    malformed address...). Nothing is returned partially.
    """
    _check_patient(patient)
    if not reading.quantities:
        raise MappingError("reading has no quantities")
    kind = codes.kind_term(reading.kind)
    body_site = _body_site(kind, reading.site)
    effective = format_datetime(reading.effective_time)
    gateway_entry = _cached_phg_entry(gateway)
    device_entry = _cached_phd_entry(reading.device, reading.kind)
    gateway_url, device_url = gateway_entry["fullUrl"], device_entry["fullUrl"]
    if gateway_url == device_url:
        raise MappingError("device and gateway have the same system id")
    entries = [gateway_entry, device_entry]
    prefix, timestamp = _identifier_parts(reading, patient)

    def identifier_of(mdc: int) -> str:
        return f"{prefix}{mdc}-{timestamp}"

    names: set[str] = set()
    for quantity in reading.quantities:
        if quantity.name in names:
            raise MappingError(f"quantity {quantity.name} appears twice in one reading")
        names.add(quantity.name)
    context = ObservationContext(
        patient=patient,
        identifier_of=identifier_of,
        effective=effective,
        gateway_url=gateway_url,
        device_url=device_url,
        body_site=body_site,
    )
    if reading.context or reading.status or reading.clock or reading.battery is not None:
        return _map_with_extras(reading, kind, entries, context)
    measurements = _measurement_entries(kind, reading, context, None)  # the hot path
    if not measurements:
        raise MappingError(_only_unmapped(reading, kind))
    entries.extend(measurements)
    return entries


def _only_unmapped(reading: Reading, kind: codes.KindTerm) -> str:
    reasons = "; ".join(f"{q.name}: {kind.unmapped[q.name]}" for q in reading.quantities)
    return f"no quantity of this {kind.kind} reading has a confirmed code ({reasons})"


def _map_with_extras(
    reading: Reading,
    kind: codes.KindTerm,
    entries: list[dict[str, Any]],
    base: ObservationContext,
) -> list[dict[str, Any]]:
    """``map_reading`` for a reading with context, status, clock check or battery level."""
    gateway_url, device_url = base.gateway_url, base.device_url
    parsed_context = parse_context(reading, kind)
    status = parse_status(reading, kind)
    conditions = status.conditions
    coincident = coincident_entry(reading, device_url, gateway_url)
    context = ObservationContext(
        patient=base.patient,
        identifier_of=base.identifier_of,
        effective=base.effective,
        gateway_url=gateway_url,
        device_url=device_url,
        body_site=parsed_context.body_site or base.body_site,
        coincident_url=None if coincident is None else coincident["fullUrl"],
    )
    measurements = _measurement_entries(kind, reading, context, parsed_context.specimen)
    if not measurements:
        raise MappingError(_only_unmapped(reading, kind))
    for measurement in measurements:
        resource = measurement["resource"]
        if parsed_context.notes:
            resource["note"] = [{"text": text} for text in parsed_context.notes]
            reorder(resource)
        if conditions is not NO_CONDITIONS:
            apply_conditions(resource, conditions)
    entries.extend(measurements)
    measured = [measurement["fullUrl"] for measurement in measurements]
    entries.extend(
        context_entries(parsed_context, context, measured, test_data=conditions.test_data)
    )
    if status.bits and kind.status is not None:  # bits only come from the kind's own table
        entries.append(
            bits_entry(kind.status, status.bits, context, measured, test_data=conditions.test_data)
        )
    if coincident is not None:
        entries.append(coincident)
    if reading.battery is not None:
        entries.append(battery_entry(reading, device_url, gateway_url))
    return entries


def transaction_bundle(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Wrap entries in a ``transaction`` Bundle.

    Entries of several readings may be concatenated: an entry repeated verbatim (the same
    PhgDevice/PhdDevice for each reading) is kept once. Two *different* entries with the same
    ``fullUrl`` are a ``MappingError``, since a transaction must not hold both.
    """
    kept: dict[str, dict[str, Any]] = {}
    for item in entries:
        url = item["fullUrl"]
        previous = kept.get(url)
        if previous is None:
            kept[url] = item
        elif previous != item:
            raise MappingError("two different bundle entries share one fullUrl")
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(kept.values())}


# --- observations ---------------------------------------------------------------------------------


def _measurement_entries(
    kind: codes.KindTerm,
    reading: Reading,
    context: ObservationContext,
    specimen: codes.QuantityTerm | None,
) -> list[dict[str, Any]]:
    """The compound Observation (if the kind has one), then one numeric per other quantity."""
    out: list[dict[str, Any]] = []
    compound = kind.compound
    parts: dict[str, Quantity] = {}
    if compound is not None:
        part_names = {component.name for component in compound.components}
        parts = {q.name: q for q in reading.quantities if q.name in part_names}
        out.append(_compound_entry(compound, parts, context))
    for quantity in reading.quantities:
        if quantity.name not in parts:
            if quantity.name in kind.unmapped:
                # No confirmed code (e.g. impedance): kept in the stored reading, not sent. The
                # rest of the reading still goes; refusing it all would lose the coded values.
                continue
            if specimen is not None and quantity.name == kind.specimen_of:
                term = specimen
            else:
                term = _numeric_term(kind, quantity.name)
            out.append(_observation_entry(term, quantity, context))
    return out


def _numeric_term(kind: codes.KindTerm, name: str) -> codes.QuantityTerm:
    try:
        return kind.numeric[name]
    except KeyError:
        reason = kind.unmapped.get(name)
        if reason is not None:
            raise MappingError(f"quantity {name!r} of kind {kind.kind}: {reason}") from None
        raise MappingError(f"unknown quantity name {name!r} for kind {kind.kind}") from None


def _body_site(kind: codes.KindTerm, site: str | None) -> codes.BodySite | None:
    if site is None:
        return None
    try:
        return kind.sites[site]
    except KeyError:
        raise MappingError(f"body site {site!r} is not known for kind {kind.kind}") from None


def _observation_entry(
    term: codes.QuantityTerm, quantity: Quantity, context: ObservationContext
) -> dict[str, Any]:
    identifier = context.identifier_of(term.mdc.code)
    value = _value_or_absent(quantity, term.units)
    coding = [mdc_coding(term.mdc)]
    loinc = term.loinc
    if term.loinc_by_unit:  # glucose: mass and molar concentrations have their own LOINC codes
        quantity_value = value.get("valueQuantity")
        loinc = term.loinc_for(quantity.unit if quantity_value is None else quantity_value["code"])
    if loinc is not None:
        coding.append(loinc_coding(loinc))
    if term.extra_loinc:
        coding.extend(loinc_coding(extra) for extra in term.extra_loinc)
    resource = observation_head(
        _profiles(term.profile, codes.PHD_NUMERIC_OBSERVATION_PROFILE),
        coding,
        identifier,
        context,
        vital_sign=term.profile is not None,
    )
    resource.update(value)
    _add_site_and_device(resource, context)
    return unique_entry(resource, codes.OBSERVATION_IDENTIFIER_SYSTEM, identifier)


def _profiles(profile: str | None, phd_profile: str) -> list[str]:
    return [phd_profile] if profile is None else [profile, phd_profile]


def _compound_entry(
    term: codes.CompoundTerm, parts: dict[str, Quantity], context: ObservationContext
) -> dict[str, Any]:
    components: list[dict[str, Any]] = []
    reasons: list[dict[str, Any]] = []
    for component in term.components:
        quantity = parts.get(component.name)
        if quantity is None:
            if component.required:
                raise MappingError(f"{term.name} reading has no {component.name} quantity")
            continue
        coding = [mdc_coding(component.mdc)]
        if component.loinc is not None:
            coding.append(loinc_coding(component.loinc))
        value = _value_or_absent(quantity, term.units)
        if "dataAbsentReason" in value:
            reasons.append(value["dataAbsentReason"])
        components.append({"code": {"coding": coding}, **value})
    identifier = context.identifier_of(term.mdc.code)
    resource = observation_head(
        [term.profile, codes.PHD_COMPOUND_NUMERIC_OBSERVATION_PROFILE],
        [mdc_coding(term.mdc), loinc_coding(term.loinc)],
        identifier,
        context,
        vital_sign=True,
    )
    if len(reasons) == len(components):  # every component is a special value
        resource["dataAbsentReason"] = _overall_reason(reasons)
    _add_site_and_device(resource, context)
    resource["component"] = components
    return unique_entry(resource, codes.OBSERVATION_IDENTIFIER_SYSTEM, identifier)


def _overall_reason(reasons: list[dict[str, Any]]) -> dict[str, Any]:
    """The components' common data-absent reason, or ``error`` when they disagree."""
    first = reasons[0]
    if all(reason == first for reason in reasons):
        return copy.deepcopy(first)
    return absent_reason(*codes.ERROR_REASON)


def _add_site_and_device(resource: dict[str, Any], context: ObservationContext) -> None:
    if context.body_site is not None:
        site = context.body_site
        resource["bodySite"] = {
            "coding": [{"system": codes.SNOMED_SYSTEM, "code": site.code, "display": site.display}]
        }
    resource["device"] = {"reference": context.device_url}


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
    return {"dataAbsentReason": absent_reason(code, display)}


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


def freeze(value: Any) -> Any:
    """An immutable deep copy of JSON-like data: entries cached and shared between bundles."""
    if isinstance(value, dict):
        return FrozenDict({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return FrozenList(freeze(item) for item in value)
    return value


@functools.lru_cache(maxsize=256)
def _cached_phd_entry(device: DeviceIdentity, reading_kind: str) -> dict[str, Any]:
    return freeze(_phd_entry(device, reading_kind))  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=16)
def _cached_phg_entry(gateway: GatewayInfo) -> dict[str, Any]:
    return freeze(_phg_entry(gateway))  # type: ignore[no-any-return]


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
    resource["type"] = {"coding": [mdc_coding(codes.PHD_DEVICE_TYPE)]}
    resource["specialization"] = [
        {
            "systemType": {"coding": [mdc_coding(kind)]},
            "version": codes.SPECIALIZATION_VERSION,
        }
    ]
    resource["version"] = _device_versions(device)
    return entry(resource, key["system"], key["value"])


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
        "type": {"coding": [mdc_coding(codes.PHG_DEVICE_TYPE)]},
        "specialization": [
            {
                "systemType": {"coding": [mdc_coding(codes.GENERIC_SPECIALIZATION)]},
                "version": codes.SPECIALIZATION_VERSION,
            }
        ],
        "version": [_version(codes.VERSION_SW, _clean_text(gateway.software_version))],
        "property": [
            {
                "type": {"coding": [mdc_coding(codes.TIME_SYNC_PROTOCOL)]},
                "valueCode": [{"coding": [mdc_coding(method)]}],
            }
        ],
    }
    return entry(resource, sysid["system"], sysid["value"])


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
    version: dict[str, Any] = {"type": {"coding": [mdc_coding(kind)]}}
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


@functools.lru_cache(maxsize=64)
def _check_patient(patient: PatientRef) -> None:
    """Refuse unusable patient identifiers (cached: the same few patients come back)."""
    system, value = patient.system, patient.value
    if not system or system.split() != [system]:
        raise MappingError("patient identifier system is empty or contains whitespace")
    if not value or value != value.strip():
        raise MappingError("patient identifier value is empty or padded with whitespace")
