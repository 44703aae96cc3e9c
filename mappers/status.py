"""``Reading.status``: measurement-status conditions and the per-kind BITS Observation.

Every name in ``Reading.status`` is exactly one of:

* a **condition** (``codes.CONDITIONS``, the same for every kind): it changes every measurement
  Observation of the reading as the PHD IG's measurement-status table says (spec §2.7):

  ==========================  =================================================================
  invalid-measurement         ``status`` entered-in-error, values replaced by DAR ``error``
  measurement-unavailable     values replaced by DAR ``not-performed``
  questionable-measurement    ``interpretation`` PoCD measurement-status ``questionable``
  calibration-ongoing         ``interpretation`` ``calibration-ongoing``
  early-estimate              ``status`` preliminary + ``interpretation`` ``early-indication``
  demonstration-data          ``meta.security`` v3-ActReason HTEST (also on context/bits Obs.)
  testing-data                same as demonstration-data
  ==========================  =================================================================

  Precedence: entered-in-error over preliminary; ``error`` over ``not-performed``; a status
  absent reason over a special FLOAT value (PHD numeric notes). Compound components lose their
  values too (each gets the reason), since an invalid panel has no valid part.

* a **bit** of the kind's BITS type (``KindTerm.status``): all the bits set on one reading go
  into ONE PhdBitsEnumerationObservation, one ``component`` per bit, code ``<MDC type>.<bit>``
  in the ``ASN1ToHL7`` code system (bit 0 = most significant bit, as the 11073 ASN.1 numbers
  them), ``valueBoolean`` true. Every confirmed bit is an *event* bit, so only set bits are
  reported (cleared state bits would have to be reported too; there are none here).

* the kind's **time fault** name (glucose ``time-fault``, Bluetooth GLS Sensor Status
  Annunciation bit 11). IEEE 11073-10417 has no such bit (its bit 11 is
  sensor-temp-out-of-range), so no code may be written for it. It says the record's time stamp is
  not trustworthy: PHD says such records are thrown away (PhdBaseObservation notes, timestamp
  table), so a reading whose ``effective_time`` comes from the device clock is refused
  (``MappingError``, quarantine). When the driver already ignored the device clock
  (``TimeSource.GATEWAY_RECEIPT``) the fault concerns no time we write and is dropped.

Anything else is a ``MappingError`` naming every unknown name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.models import Reading, TimeSource
from mappers import codes
from mappers.errors import MappingError
from mappers.resources import (
    ObservationContext,
    absent_reason,
    mark_test_data,
    mdc_coding,
    observation_entry,
    observation_head,
    references,
    reorder,
)


@dataclass(frozen=True, slots=True)
class Conditions:
    """The combined effect of a reading's measurement-status conditions."""

    status: str | None  # Observation.status instead of final
    absent: tuple[str, str] | None  # data-absent-reason (code, display) replacing every value
    interpretations: tuple[tuple[str, str], ...]  # PoCD measurement-status (code, display)
    test_data: bool


@dataclass(frozen=True, slots=True)
class ReadingStatus:
    conditions: Conditions
    bits: tuple[codes.StatusBit, ...]  # in bit order, each once


NO_CONDITIONS = Conditions(status=None, absent=None, interpretations=(), test_data=False)


def parse_status(reading: Reading, kind: codes.KindTerm) -> ReadingStatus:
    """Sort ``reading.status`` into conditions and bits, or ``MappingError`` for unknown names."""
    found: list[codes.Condition] = []
    bits: dict[int, codes.StatusBit] = {}
    unknown: list[str] = []
    term = kind.status
    for name in reading.status:
        condition = codes.CONDITIONS.get(name)
        if condition is not None:
            found.append(condition)
        elif term is not None and name in term.bits:
            bit = term.bits[name]
            bits[bit.bit] = bit
        elif term is not None and name == term.time_fault:
            if reading.time_source is not TimeSource.GATEWAY_RECEIPT:
                raise MappingError(
                    f"status {name}: the device flags its time stamp as faulty"
                    " (PHD: records without a trustworthy time are not uploaded)"
                )
        else:
            unknown.append(name)
    if unknown:
        names = ", ".join(repr(name) for name in sorted(set(unknown)))
        raise MappingError(f"status name(s) {names} not known for kind {kind.kind}")
    return ReadingStatus(conditions=_combine(found), bits=tuple(bits[b] for b in sorted(bits)))


def _combine(found: list[codes.Condition]) -> Conditions:
    if not found:
        return NO_CONDITIONS
    present = {condition.name for condition in found}
    status: str | None = None
    absent: tuple[str, str] | None = None
    interpretations: list[tuple[str, str]] = []
    # table order, so the output never depends on the order the driver listed the names in
    for condition in codes.CONDITIONS.values():
        if condition.name not in present:
            continue
        if condition.status is not None and status != "entered-in-error":
            status = condition.status
        if condition.absent is not None and absent is None:
            absent = condition.absent
        if condition.interpretation is not None:
            interpretations.append(condition.interpretation)
    return Conditions(
        status=status,
        absent=absent,
        interpretations=tuple(interpretations),
        test_data=any(condition.test_data for condition in found),
    )


def apply_conditions(resource: dict[str, Any], conditions: Conditions) -> None:
    """Change one measurement Observation (numeric or compound) in place."""
    if conditions.test_data:
        mark_test_data(resource)
    if conditions.status is not None:
        resource["status"] = conditions.status
    if conditions.absent is not None:
        reason = absent_reason(*conditions.absent)
        resource.pop("valueQuantity", None)
        resource["dataAbsentReason"] = reason
        for component in resource.get("component", ()):
            component.pop("valueQuantity", None)
            component["dataAbsentReason"] = absent_reason(*conditions.absent)
    if conditions.interpretations:
        resource["interpretation"] = [
            {
                "coding": [
                    {"system": codes.MEASUREMENT_STATUS_SYSTEM, "code": code, "display": display}
                ]
            }
            for code, display in conditions.interpretations
        ]
    reorder(resource)


def bits_entry(
    term: codes.StatusTerm,
    bits: tuple[codes.StatusBit, ...],
    context: ObservationContext,
    derived_from: list[str],
    *,
    test_data: bool,
) -> dict[str, Any]:
    """The reading's PhdBitsEnumerationObservation, derived from its measurement Observations."""
    resource = observation_head(
        [codes.PHD_BITS_ENUMERATION_OBSERVATION_PROFILE],
        [mdc_coding(term.mdc)],
        context.identifier_of(term.mdc.code),
        context,
        vital_sign=False,
    )
    if test_data:
        mark_test_data(resource)
    resource["device"] = {"reference": context.device_url}
    resource["derivedFrom"] = references(derived_from)
    resource["component"] = [
        {
            "code": {
                "coding": [
                    {
                        "system": codes.ASN1_TO_HL7_SYSTEM,
                        "code": bit_code(term, bit),
                        "display": bit.asn1_name,
                    }
                ]
            },
            "valueBoolean": True,
        }
        for bit in bits
    ]
    return observation_entry(resource)


def bit_code(term: codes.StatusTerm, bit: codes.StatusBit) -> str:
    """``ASN1ToHL7`` code of a bit: ``<decimal MDC type>.<ASN.1 bit number>``."""
    return f"{term.mdc.code}.{bit.bit}"
