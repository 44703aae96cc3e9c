"""Profile set ``fr-mesures``: a ``Reading`` as ANS "Mesures de santé" 3.1.1 (Mon espace santé).

``map_reading_fr`` returns one FHIR R4 transaction Bundle: the sensor as a PHD **1.0.0**
``PhdDevice`` (the version ANS 3.1.1 depends on), then one Observation per value Mon espace santé
(MES) takes, each claiming one Mes profile. ``feed_bundles`` splits it into the feed bundles MES
accepts (MesBundleFluxAlimentation: the Device entry, then exactly one Observation entry). Rules:
``/work/shared/specs/fhir-mapping.md`` §4 and §6; every decision taken where they are silent is in
``docs/fr-mesures.md`` ("Decisions") and summarised here.

What is sent, per reading kind (``mappers.codes.KINDS``):

============================  ==================================================================
weight, body-composition      body weight (29463-7, kg) and body height (8302-2, cm). BMI is
                              never sent (MES refuses it); body fat, fat-free / soft lean / water
                              mass, impedance... have no ANS profile and are dropped.
blood-pressure                the BP panel (85354-9; systolic 8480-6, diastolic 8462-4, mean
                              8478-0 in mm[Hg]) and the pulse as a heart rate (8867-4, /min).
body-temperature              body temperature (8310-5, Cel); the body site is not sent.
spo2 (spot-check)             SpO2 (2708-6, %) and the pulse as a heart rate (8867-4, /min).
blood-glucose                 blood glucose (2345-7 in the NOS LOINC system, mg/dL) with the
                              moment of measurement from the meal context.
cgm, spo2 continuous          nothing (``NotSendable``): raw monitoring streams.
============================  ==================================================================

* **Never sent**: an Observation without a value (a special FLOAT value, a failed measurement),
  BMI, quantities without an ANS profile, status bits, coded context, coincident time stamp,
  battery. A reading left with nothing raises ``NotSendable`` (a ``MappingError``) naming why.
  A reading whose measurement-status conditions make every value unfit (invalid, unavailable,
  questionable, calibrating, early estimate, demonstration or test data) is ``NotSendable``.
* **Units** are the only ones MES takes; other device units are converted exactly (``Fraction``
  arithmetic, no float) and rounded once, half-even, to the power of ten at or just below the
  device's own resolution expressed in the target unit: converting back and rounding to the
  device's resolution gives the device's value again. Power-of-ten conversions (g -> kg,
  m -> cm) only move the exponent. Factors: 1 [lb_av] = 0.45359237 kg, 1 [in_i] = 2.54 cm,
  Cel = ([degF] - 32) x 5/9, 1 mm[Hg] = 133.322387415 Pa, glucose 1 mmol/L = 18.0156 mg/dL
  (molar mass 180.156 g/mol); a converted glucose keeps its device value and code in the
  ``mesures-original-data`` extension.
* **Blood glucose without a meal context** is not sent: MES requires the moment of measurement
  (JDV J157) and we do not invent one. Casual and bedtime meal contexts are LA46-8 "other".
* **Device**: SYSID identifier (the DIS System ID; for a device without one, the EUI-64 derived
  from its 48-bit Bluetooth address by inserting FF-FE after the OUI) plus the BTMAC
  identifier; ``id`` = UUIDv5 of the SYSID identifier (the same UUID as the ``phd`` set's Device
  ``fullUrl`` for a device with a System ID); conditional create on the SYSID.
* **Observation**: no ``ifNoneExist`` (MES has no conditional create for Observations); its
  identifier is the ``phd`` set's conditional-create identifier for the same measurement
  (``mappers.phd.observation_identifier``), so both sets share one idempotency key and the
  uplink de-duplicates by searching it. ``device.reference`` is ``Device/<Device.id>`` (MES links
  by id); ``subject`` is the patient identifier only (``urn:oid:<pairing authority>`` + idPe).
* ``bodySite`` and ``method`` are not sent: their JDV value sets (NOS) are not available to check
  the codes against, and both are optional.

Pure functions: no I/O, no clock, no logging, plain ``dict``s (numbers stay ``Decimal``);
identical inputs give byte-identical bundles. Messages name fields and rules, never a value.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from drivers.models import Absent, DeviceIdentity, GatewayInfo, PatientRef, Quantity, Reading
from mappers import codes
from mappers.context import parse_context
from mappers.errors import MappingError
from mappers.phd import (
    _clean_text,
    _dashed_hex,
    _required_text,
    _version,
    freeze,
    observation_identifier,
)
from mappers.resources import _uuid5, format_datetime, mdc_coding
from mappers.status import parse_status

__all__ = [
    "MES_PROFILES",
    "PHD_DEVICE_PROFILE",
    "MappingError",
    "NotSendable",
    "feed_bundles",
    "map_reading_fr",
]


class NotSendable(MappingError):
    """Nothing of this reading can be sent in the fr-mesures form (e.g. only a BMI, only NaN
    values, a raw CGM record); the message says why, with no health value in it."""


# --- canonicals, systems, codes -------------------------------------------------------------------

_MES_SD = "https://interop.esante.gouv.fr/ig/fhir/mesures/StructureDefinition/"
PROFILE_BODY_WEIGHT = _MES_SD + "mesures-fr-observation-body-weight"
PROFILE_BODY_HEIGHT = _MES_SD + "mesures-fr-observation-bodyheight"
PROFILE_BP = _MES_SD + "mesures-fr-observation-bp"
PROFILE_HEART_RATE = _MES_SD + "mesures-fr-observation-heartrate"
PROFILE_BODY_TEMPERATURE = _MES_SD + "mesures-fr-observation-body-temperature"
PROFILE_OXYGEN_SAT = _MES_SD + "mesures-fr-observation-oxygen-sat"
PROFILE_GLUCOSE = _MES_SD + "mesures-observation-glucose"
MES_PROFILES = frozenset(
    {
        PROFILE_BODY_WEIGHT,
        PROFILE_BODY_HEIGHT,
        PROFILE_BP,
        PROFILE_HEART_RATE,
        PROFILE_BODY_TEMPERATURE,
        PROFILE_OXYGEN_SAT,
        PROFILE_GLUCOSE,
    }
)
MOMENT_OF_MEASUREMENT_EXTENSION = _MES_SD + "mesures-moment-of-measurement"
ORIGINAL_DATA_EXTENSION = _MES_SD + "mesures-original-data"

# PHD 1.0.0 (what ANS 3.1.1 depends on): the same PhdDevice canonical as PHD 2.0, but the
# identifier types come from the IG-local code system, not THO (spec §1.10, §6.1).
PHD_DEVICE_PROFILE = codes.PHD_DEVICE_PROFILE

# NOS terminology URIs used by the ANS glucose profile and its examples (spec §4.5).
NOS_LOINC_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_A04-Loinc/FHIR/TRE-A04-Loinc"
GLUCOSE_BLOOD_CODE = "2345-7"  # JDV J154 "glycémie" (blood glucose)

# Bluetooth GLS meal context -> JDV J157 moment of measurement (LOINC in the NOS system). The
# mapping is ours (spec §6.4): the meals J157 names keep their code, any other moment the device
# names is "other" (LA46-8). No context at all is not "other": see ``_glucose_entry``.
GLUCOSE_MOMENTS: Mapping[str, str] = MappingProxyType(
    {
        "fasting": "53049-3",
        "preprandial": "88365-2",
        "postprandial": "16915-1",
        "casual": "LA46-8",
        "bedtime": "LA46-8",
    }
)

# PLX Continuous Measurement (drivers.uuids.PLX_CONTINUOUS_MEASUREMENT; mappers import no driver
# module but drivers.models).
_PLX_CONTINUOUS = "2A5F"

_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


# --- units ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Conversion:
    """``target = (device + offset) * factor``; ``shift`` instead for a power of ten."""

    factor: Fraction = Fraction(1)
    offset: Fraction = Fraction(0)
    shift: int = 0

    @property
    def identity(self) -> bool:
        return self.factor == 1 and not self.offset and not self.shift


_SAME = _Conversion()
_LB_TO_KG = _Conversion(factor=Fraction("0.45359237"))  # exact by definition (international lb)
_IN_TO_CM = _Conversion(factor=Fraction("2.54"))  # exact by definition (international inch)
_F_TO_C = _Conversion(factor=Fraction(5, 9), offset=Fraction(-32))
# 1 mm[Hg] = 13.5951 g/cm3 x 9.80665 m/s2 x 1 mm = 133.322387415 Pa (conventional, exact).
_KPA_TO_MMHG = _Conversion(factor=Fraction(1000) / Fraction("133.322387415"))
# Glucose C6H12O6, 180.156 g/mol (IUPAC standard atomic weights): 1 mmol/L = 18.0156 mg/dL.
_MMOL_TO_MG_DL = _Conversion(factor=Fraction("18.0156"))


def convert(value: Decimal, conversion: _Conversion) -> Decimal:
    """A device value in the MES unit: exact, then one half-even rounding (see module doc)."""
    if conversion.identity:
        return codes.plain_decimal(value)
    if conversion.shift:
        return codes.plain_decimal(value.scaleb(conversion.shift))
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite: checked by the caller
    exact = (Fraction(value) + conversion.offset) * conversion.factor
    resolution = Fraction(10) ** exponent * conversion.factor
    step = _floor_log10(resolution)
    rounded = round(exact / Fraction(10) ** step)  # Fraction.__round__: exact, half-even
    return codes.plain_decimal(Decimal(rounded).scaleb(step))


def _floor_log10(x: Fraction) -> int:
    """The largest ``k`` with ``10**k <= x`` (``x > 0``), exactly."""
    k = len(str(x.numerator)) - len(str(x.denominator))
    while Fraction(10) ** k > x:
        k -= 1
    while Fraction(10) ** (k + 1) <= x:
        k += 1
    return k


# --- what each quantity becomes -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """One Mes Observation profile for one quantity (or the BP components' shared unit)."""

    profile: str
    loinc: codes.Loinc
    unit: str  # the one UCUM code MES takes
    sources: Mapping[str, _Conversion]  # device UCUM unit -> conversion


def _loinc_of(term: codes.QuantityTerm) -> codes.Loinc:
    """The vital-sign LOINC code of a ``phd`` term (the one its R4 profile fixes)."""
    assert term.loinc is not None
    return term.loinc


_WEIGHT = _Target(
    PROFILE_BODY_WEIGHT,
    _loinc_of(codes.QUANTITIES["body-weight"]),
    "kg",
    MappingProxyType({"kg": _SAME, "g": _Conversion(shift=-3), "[lb_av]": _LB_TO_KG}),
)
_HEIGHT = _Target(
    PROFILE_BODY_HEIGHT,
    _loinc_of(codes.QUANTITIES["body-height"]),
    "cm",
    MappingProxyType({"cm": _SAME, "m": _Conversion(shift=2), "[in_i]": _IN_TO_CM}),
)
_HEART_RATE = _Target(
    PROFILE_HEART_RATE,
    _loinc_of(codes.BP_PULSE_QUANTITIES["pulse-rate"]),
    "/min",
    MappingProxyType({"/min": _SAME}),
)
_TEMPERATURE = _Target(
    PROFILE_BODY_TEMPERATURE,
    _loinc_of(codes.TEMPERATURE_QUANTITIES["body-temperature"]),
    "Cel",
    MappingProxyType({"Cel": _SAME, "[degF]": _F_TO_C}),
)
_OXYGEN_SAT = _Target(
    PROFILE_OXYGEN_SAT,
    _loinc_of(codes.SPO2_QUANTITIES["spo2"]),
    "%",
    MappingProxyType({"%": _SAME}),
)
_BP = _Target(
    PROFILE_BP,
    codes.BLOOD_PRESSURE.loinc,
    "mm[Hg]",
    MappingProxyType({"mm[Hg]": _SAME, "kPa": _KPA_TO_MMHG}),
)
_GLUCOSE = _Target(
    PROFILE_GLUCOSE,
    codes.Loinc(GLUCOSE_BLOOD_CODE, ""),  # NOS system, no display (the JDV's is not at hand)
    "mg/dL",
    MappingProxyType({"mg/dL": _SAME, "mmol/L": _MMOL_TO_MG_DL}),
)

_NO_PROFILE = "no ANS Mesures de santé profile"
_BMI = "MES refuses BMI (it computes it)"

# ``Reading.kind`` -> quantity name -> target (a Mes profile) or the reason it is not sent.
_QUANTITY_TARGETS: Mapping[str, Mapping[str, _Target | str]] = MappingProxyType(
    {
        "weight": MappingProxyType({"body-weight": _WEIGHT, "body-height": _HEIGHT, "bmi": _BMI}),
        "body-composition": MappingProxyType(
            {
                "body-weight": _WEIGHT,
                "body-height": _HEIGHT,
                "bmi": _BMI,
                **{
                    name: _NO_PROFILE
                    for name in (
                        *codes.BODY_COMPOSITION_QUANTITIES,
                        *codes.BODY_COMPOSITION_UNMAPPED,
                    )
                    if name not in codes.QUANTITIES
                },
            }
        ),
        "blood-pressure": MappingProxyType({"pulse-rate": _HEART_RATE}),
        "body-temperature": MappingProxyType({"body-temperature": _TEMPERATURE}),
        "spo2": MappingProxyType(
            {
                "spo2": _OXYGEN_SAT,
                "pulse-rate": _HEART_RATE,
                **{name: _NO_PROFILE for name in codes.SPO2_UNMAPPED},
            }
        ),
        "blood-glucose": MappingProxyType({"glucose": _GLUCOSE}),
    }
)


# --- public API -----------------------------------------------------------------------------------


def map_reading_fr(
    reading: Reading, patient: PatientRef, gateway: GatewayInfo, *, solution_oid: str
) -> dict[str, Any]:
    """A FHIR transaction Bundle (plain dicts, hot path - no fhir.resources in the module): at
    most one PhdDevice entry first, then one or more Observation entries, each conforming to a
    Mes profile.

    ``gateway`` is accepted for symmetry with ``mappers.phd.map_reading``: MES has no place for
    the gateway Device (spec §6.11); the sending solution is ``meta.source``.

    Raises ``MappingError`` for configuration errors (a patient system that is not
    ``urn:oid:<dotted oid>``, a malformed ``solution_oid``) and for readings no profile set can
    map (unknown names, units or context, naive time...); ``NotSendable`` when the reading is
    fine but nothing of it can go to MES.
    """
    del gateway  # no PhgDevice in MES
    source = _meta_source(solution_oid)
    _check_patient(patient)
    kind = codes.kind_term(reading.kind)
    if reading.kind == "cgm":
        raise NotSendable(
            "continuous glucose monitor records are not sent to MES: it takes interstitial"
            " glucose only as a multi-day summary (MED-969 with a number of days)"
        )
    if reading.kind == "spo2" and reading.characteristic.upper() == _PLX_CONTINUOUS:
        raise NotSendable(
            "continuous pulse-oximetry samples are a monitoring stream, not measurements"
            " for the patient record: only spot-checks are sent to MES"
        )
    targets = _QUANTITY_TARGETS.get(reading.kind)
    if targets is None:  # a kind added to codes.KINDS but not here
        raise NotSendable(f"no ANS Mesures de santé profile for {reading.kind} readings")
    if not reading.quantities:
        raise MappingError("reading has no quantities")
    if reading.site is not None and reading.site not in kind.sites:
        raise MappingError(f"body site {reading.site!r} is not known for kind {kind.kind}")
    if reading.status:
        _check_status(reading, kind)
    meal: str | None = None
    specimen = None
    if reading.context:
        parsed = parse_context(reading, kind)  # validates every key and value name
        specimen = parsed.specimen
        meal = dict(reading.context).get("meal")
    effective = format_datetime(reading.effective_time)

    device_entry = _cached_device_entry(reading.device, reading.kind)
    head = _Head(
        source=source,
        patient=patient,
        effective=effective,
        device_reference="Device/" + device_entry["resource"]["id"],
    )
    entries: list[dict[str, Any]] = [device_entry]
    dropped: list[str] = []
    names: set[str] = set()
    compound = kind.compound
    parts: dict[str, Quantity] = {}
    if compound is not None:
        part_names = {component.name for component in compound.components}
        parts = {q.name: q for q in reading.quantities if q.name in part_names}
        bp = _bp_entry(reading, patient, compound, parts, head, dropped)
        if bp is not None:
            entries.append(bp)
    for quantity in reading.quantities:
        name = quantity.name
        if name in names:
            raise MappingError(f"quantity {name} appears twice in one reading")
        names.add(name)
        if name in parts:
            continue
        target = targets.get(name)
        if target is None:
            raise MappingError(f"unknown quantity name {name!r} for kind {kind.kind}")
        if isinstance(target, str):
            dropped.append(f"{name}: {target}")
            continue
        if target is _GLUCOSE:
            term = specimen if specimen is not None else kind.numeric[name]
            built = _glucose_entry(reading, patient, quantity, term, meal, head, dropped)
        else:
            mdc = kind.numeric[name].mdc.code
            built = _numeric_entry(reading, patient, quantity, target, mdc, head, dropped)
        if built is not None:
            entries.append(built)
    if len(entries) == 1:
        reasons = "; ".join(dropped)
        raise NotSendable(
            f"nothing of this {kind.kind} reading can be sent in the fr-mesures form ({reasons})"
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def feed_bundles(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """Split a map_reading_fr bundle into MES feed bundles (MesBundleFluxAlimentation): each a
    transaction with the Device entry (when present) and exactly one Observation entry, in that
    order. Pure, deterministic.

    The entries are shared with ``bundle``, not copied: treat both as read-only. A bundle that
    ``map_reading_fr`` cannot have produced (not a transaction, several Devices, another resource
    type, no Observation) is a ``MappingError``.
    """
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
        raise MappingError("not a transaction Bundle")
    devices: list[dict[str, Any]] = []
    observations: list[dict[str, Any]] = []
    for item in bundle.get("entry", ()):
        resource_type = item["resource"]["resourceType"]
        if resource_type == "Device":
            devices.append(item)
        elif resource_type == "Observation":
            observations.append(item)
        else:
            raise MappingError(f"a feed bundle cannot carry a {resource_type}")
    if len(devices) > 1:
        raise MappingError("a feed bundle carries at most one Device")
    if not observations:
        raise MappingError("the bundle has no Observation to feed")
    return [
        {"resourceType": "Bundle", "type": "transaction", "entry": [*devices, observation]}
        for observation in observations
    ]


# --- checks ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _meta_source(solution_oid: str) -> str:
    if not isinstance(solution_oid, str) or not _OID.fullmatch(solution_oid):
        raise MappingError("solution_oid must be a dotted OID such as 1.2.250.1.999.1")
    return "urn:oid:" + solution_oid


@functools.lru_cache(maxsize=64)
def _check_patient(patient: PatientRef) -> None:
    """MES names the patient by (pairing authority OID, idPe): ``urn:oid:<dotted oid>|<idPe>``."""
    system, value = patient.system, patient.value
    if not system.startswith("urn:oid:") or not _OID.fullmatch(system[len("urn:oid:") :]):
        raise MappingError(
            "fr-mesures needs the patient as urn:oid:<pairing authority OID>|<idPe>;"
            " the patient identifier system is not urn:oid:<dotted oid>"
        )
    if not value or value != value.strip() or _UNPRINTABLE.search(value):
        raise MappingError("patient identifier value is empty, padded or holds control characters")


def _check_status(reading: Reading, kind: codes.KindTerm) -> None:
    """Status names are validated as in the ``phd`` set; conditions that make every value unfit
    for a patient record make the reading ``NotSendable``. Status bits are not sent (no profile)
    but leave the measurement itself alone."""
    conditions = parse_status(reading, kind).conditions
    if conditions.test_data:
        raise NotSendable("the device flagged this reading as demonstration or test data")
    if conditions.absent is not None:
        raise NotSendable("the device flagged the measurement invalid or unavailable: no value")
    if conditions.status is not None or conditions.interpretations:
        raise NotSendable(
            "the device flagged the measurement questionable, calibrating or an early estimate:"
            " only final, trustworthy values are sent to MES"
        )


# --- observations ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Head:
    """What every Observation of one reading shares."""

    source: str
    patient: PatientRef
    effective: str
    device_reference: str


_VITAL_SIGNS = MappingProxyType(
    {"system": codes.OBSERVATION_CATEGORY_SYSTEM, "code": codes.VITAL_SIGNS_CATEGORY}
)


def _observation(
    profile: str,
    code: dict[str, Any],
    identifier: str,
    head: _Head,
    extension: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An Observation up to ``effectiveDateTime``, elements in FHIR order."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"source": head.source, "profile": [profile]},
    }
    if extension:
        resource["extension"] = extension
    resource["identifier"] = [{"system": codes.OBSERVATION_IDENTIFIER_SYSTEM, "value": identifier}]
    resource["status"] = "final"
    resource["category"] = [{"coding": [dict(_VITAL_SIGNS)]}]
    resource["code"] = {"coding": [code]}
    resource["subject"] = {
        "identifier": {"system": head.patient.system, "value": head.patient.value}
    }
    resource["effectiveDateTime"] = head.effective
    return resource


def _entry(resource: dict[str, Any], identifier: str) -> dict[str, Any]:
    """POST without ifNoneExist; fullUrl as the ``phd`` set's for the same identifier."""
    name = f"Observation/{codes.OBSERVATION_IDENTIFIER_SYSTEM}|{identifier}"
    return {
        "fullUrl": "urn:uuid:" + _uuid5(name),
        "resource": resource,
        "request": {"method": "POST", "url": "Observation"},
    }


def _loinc(loinc: codes.Loinc) -> dict[str, Any]:
    return {"system": codes.LOINC_SYSTEM, "code": loinc.code, "display": loinc.display}


def _quantity_value(quantity: Quantity, target: _Target) -> tuple[dict[str, Any] | None, str]:
    """``(valueQuantity in the MES unit, device unit)``, or ``None`` for a special value."""
    conversion = target.sources.get(quantity.unit)
    if conversion is None:
        raise MappingError(f"unit {quantity.unit!r} is not allowed for {quantity.name}")
    if quantity.absent is not None:
        if quantity.value is not None:
            raise MappingError(f"{quantity.name}: both a value and an absent reason")
        try:
            Absent(quantity.absent)
        except ValueError:
            raise MappingError(f"{quantity.name}: unknown absent reason") from None
        return None, quantity.unit
    value = quantity.value
    if value is None:
        raise MappingError(f"{quantity.name}: neither a value nor an absent reason")
    if not isinstance(value, Decimal) or not value.is_finite():
        raise MappingError(f"{quantity.name}: value must be a finite Decimal")
    return (
        {
            "value": convert(value, conversion),
            "unit": codes.UCUM_DISPLAY.get(target.unit, target.unit),
            "system": codes.UCUM_SYSTEM,
            "code": target.unit,
        },
        quantity.unit,
    )


def _numeric_entry(
    reading: Reading,
    patient: PatientRef,
    quantity: Quantity,
    target: _Target,
    mdc: int,
    head: _Head,
    dropped: list[str],
) -> dict[str, Any] | None:
    value, _unit = _quantity_value(quantity, target)
    if value is None:
        dropped.append(f"{quantity.name}: no value (special value)")
        return None
    identifier = observation_identifier(reading, patient, mdc)
    resource = _observation(target.profile, _loinc(target.loinc), identifier, head)
    resource["valueQuantity"] = value
    resource["device"] = {"reference": head.device_reference}
    return _entry(resource, identifier)


def _bp_entry(
    reading: Reading,
    patient: PatientRef,
    term: codes.CompoundTerm,
    parts: dict[str, Quantity],
    head: _Head,
    dropped: list[str],
) -> dict[str, Any] | None:
    """The BP panel: systolic and diastolic must have values (R4 ``bp`` 1..1 slices, and MES
    takes no value-less measurement); a mean arterial pressure without one is left out."""
    components: list[dict[str, Any]] = []
    for component in term.components:
        quantity = parts.get(component.name)
        if quantity is None:
            if component.required:
                raise MappingError(f"{term.name} reading has no {component.name} quantity")
            continue
        value, _unit = _quantity_value(quantity, _BP)
        if value is None:
            if component.required:
                dropped.append(f"{term.name}: {component.name} has no value (special value)")
                return None
            continue
        assert component.loinc is not None  # every BP component has its LOINC code
        components.append({"code": {"coding": [_loinc(component.loinc)]}, "valueQuantity": value})
    identifier = observation_identifier(reading, patient, term.mdc.code)
    resource = _observation(PROFILE_BP, _loinc(term.loinc), identifier, head)
    resource["device"] = {"reference": head.device_reference}
    resource["component"] = components
    return _entry(resource, identifier)


def _glucose_entry(
    reading: Reading,
    patient: PatientRef,
    quantity: Quantity,
    term: codes.QuantityTerm,
    meal: str | None,
    head: _Head,
    dropped: list[str],
) -> dict[str, Any] | None:
    value, unit = _quantity_value(quantity, _GLUCOSE)
    if term.mdc.code == codes.GLUCOSE_SPECIMENS["interstitial-fluid"].mdc.code:
        dropped.append(
            "glucose: interstitial glucose goes to MES only as a multi-day summary"
            " (MED-969 with a number of days)"
        )
        return None
    if value is None:
        dropped.append("glucose: no value (special value)")
        return None
    moment = GLUCOSE_MOMENTS.get(meal) if meal is not None else None
    if moment is None:
        dropped.append(
            "glucose: MES requires the moment of measurement (JDV J157) and the device"
            " reported no meal context"
        )
        return None
    extension: list[dict[str, Any]] = [
        {
            "url": MOMENT_OF_MEASUREMENT_EXTENSION,
            "valueCodeableConcept": {"coding": [{"system": NOS_LOINC_SYSTEM, "code": moment}]},
        }
    ]
    if unit != _GLUCOSE.unit:
        original = term.loinc_for(unit)
        assert original is not None  # every glucose specimen has a molar LOINC code
        assert quantity.value is not None
        extension.append(
            {
                "url": ORIGINAL_DATA_EXTENSION,
                "extension": [
                    {"url": "has-been-converted", "valueBoolean": True},
                    {
                        "url": "original-code",
                        "valueCodeableConcept": {
                            "coding": [
                                {
                                    "system": NOS_LOINC_SYSTEM,
                                    "code": original.code,
                                    "display": original.display,
                                }
                            ]
                        },
                    },
                    {
                        "url": "original-value",
                        "valueQuantity": {
                            "value": codes.plain_decimal(quantity.value),
                            "unit": codes.UCUM_DISPLAY.get(unit, unit),
                            "system": codes.UCUM_SYSTEM,
                            "code": unit,
                        },
                    },
                ],
            }
        )
    identifier = observation_identifier(reading, patient, term.mdc.code)
    code = {"system": NOS_LOINC_SYSTEM, "code": GLUCOSE_BLOOD_CODE}
    resource = _observation(PROFILE_GLUCOSE, code, identifier, head, extension)
    resource["valueQuantity"] = value
    resource["device"] = {"reference": head.device_reference}
    return _entry(resource, identifier)


# --- the device (PhdDevice, PHD 1.0.0) ------------------------------------------------------------


def device_sysid(device: DeviceIdentity) -> str:
    """The SYSID identifier value: the DIS System ID, or the EUI-64 derived from the 48-bit
    Bluetooth address (OUI, FF-FE, the rest: IEEE's EUI-48 -> EUI-64 encapsulation), dashed."""
    if device.system_id:
        return _dashed_hex(device.system_id, 16, "system id")
    address = _dashed_hex(device.address, 12, "Bluetooth address")
    return f"{address[:8]}-FF-FE-{address[9:]}"


def _identifier(code: str, display: str, system: str, value: str) -> dict[str, Any]:
    coding = {"system": codes.CONTINUA_DEVICE_IDENTIFIERS_PHD1, "code": code, "display": display}
    return {"type": {"coding": [coding]}, "system": system, "value": value}


@functools.lru_cache(maxsize=256)
def _cached_device_entry(device: DeviceIdentity, reading_kind: str) -> dict[str, Any]:
    """Built once per device and kind, shared and immutable (as the ``phd`` set's)."""
    return freeze(_device_entry(device, reading_kind))  # type: ignore[no-any-return]


def _device_entry(device: DeviceIdentity, reading_kind: str) -> dict[str, Any]:
    sysid = device_sysid(device)
    btmac = _dashed_hex(device.address, 12, "Bluetooth address")
    device_id = _uuid5(f"Device/{codes.SYSID_SYSTEM}|{sysid}")
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": device_id,
        "meta": {"profile": [PHD_DEVICE_PROFILE]},
        "identifier": [
            _identifier(codes.SYSID_TYPE_CODE, codes.SYSID_TYPE_DISPLAY, codes.SYSID_SYSTEM, sysid),
            _identifier(codes.BTMAC_TYPE_CODE, codes.BTMAC_TYPE_DISPLAY, codes.BTMAC_SYSTEM, btmac),
        ],
    }
    resource.update(_required_text("manufacturer", device.manufacturer))
    serial = _clean_text(device.serial)
    if serial is not None:
        resource["serialNumber"] = serial
    resource.update(_required_text("modelNumber", device.model))
    resource["type"] = {"coding": [mdc_coding(codes.PHD_DEVICE_TYPE)]}
    resource["specialization"] = [
        {
            "systemType": {"coding": [mdc_coding(codes.specialization(reading_kind))]},
            "version": codes.SPECIALIZATION_VERSION,
        }
    ]
    versions = [
        _version(kind, text)
        for kind, raw in (
            (codes.VERSION_FW, device.firmware),
            (codes.VERSION_SW, device.software),
            (codes.VERSION_HW, device.hardware),
        )
        if (text := _clean_text(raw)) is not None
    ]
    if versions:  # optional in PHD 1.0.0: no placeholder for unknown revisions
        resource["version"] = versions
    return {
        "fullUrl": "urn:uuid:" + device_id,
        "resource": resource,
        "request": {
            "method": "POST",
            "url": "Device",
            "ifNoneExist": f"identifier={codes.SYSID_SYSTEM}|{sysid}",
        },
    }
