"""Every code, system and URL the mappers write, in one table.

Sources (see ``/work/shared/specs/fhir-mapping.md``): MDC numbers are 32-bit
``partition * 65536 + term`` values written in decimal (§2.8, §3); LOINC codes and R4 profile
URLs are the FHIR R4 vital-signs ones (§3); PHD URLs are those of the PHD IG 2.0 (§1.14), with the
PHD 1.x variants kept where a later profile set (ANS / PHD 1.0) needs them.

Everything here is immutable (frozen dataclasses, ``MappingProxyType``, ``frozenset``): the
mappers read it, nobody writes it. Tests check the code/display pairs against their own literal
copy, so a slip here (say, a heart-rate LOINC on a weight) fails loudly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType

from drivers.models import Absent
from mappers.errors import MappingError

# --- code systems and identifier systems --------------------------------------------------------

MDC_SYSTEM = "urn:iso:std:iso:11073:10101"
LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
VITAL_SIGNS_CATEGORY = "vital-signs"
PHD_CATEGORY_SYSTEM = "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories"
PHD_CATEGORY_CODE = "phd"
DATA_ABSENT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
SNOMED_SYSTEM = "http://snomed.info/sct"

# Device identifier types: PHD 2.0 uses the THO code system; PHD 1.x (and therefore ANS/MES,
# which depends on PHD 1.0.0) used the IG-local one. The ``phd`` profile set writes the THO URL.
CONTINUA_DEVICE_IDENTIFIERS = "http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers"
CONTINUA_DEVICE_IDENTIFIERS_PHD1 = "http://hl7.org/fhir/uv/phd/CodeSystem/ContinuaDeviceIdentifiers"
SYSID_TYPE_CODE = "SYSID"
SYSID_TYPE_DISPLAY = "IEEE 11073 System Identifier"
BTMAC_TYPE_CODE = "BTMAC"
BTMAC_TYPE_DISPLAY = "Bluetooth MAC address"
SYSID_SYSTEM = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"  # EUI-64, dashed upper-case hex
BTMAC_SYSTEM = "http://hl7.org/fhir/sid/eui-48/bluetooth"  # EUI-48, dashed upper-case hex

# Observation conditional-create identifier system (PHD 2.0; PHD 1.x wrote no system).
OBSERVATION_IDENTIFIER_SYSTEM = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"

# --- extensions and profiles ----------------------------------------------------------------------

GATEWAY_DEVICE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
DATA_ABSENT_REASON_EXTENSION = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"

_PHD_SD = "http://hl7.org/fhir/uv/phd/StructureDefinition/"
PHD_NUMERIC_OBSERVATION_PROFILE = _PHD_SD + "PhdNumericObservation"
PHD_COMPOUND_NUMERIC_OBSERVATION_PROFILE = _PHD_SD + "PhdCompoundNumericObservation"
PHD_DEVICE_PROFILE = _PHD_SD + "PhdDevice"
PHG_DEVICE_PROFILE = _PHD_SD + "PhgDevice"

_R4_SD = "http://hl7.org/fhir/StructureDefinition/"
BODYWEIGHT_PROFILE = _R4_SD + "bodyweight"
BODYHEIGHT_PROFILE = _R4_SD + "bodyheight"
BMI_PROFILE = _R4_SD + "bmi"
BP_PROFILE = _R4_SD + "bp"
HEARTRATE_PROFILE = _R4_SD + "heartrate"
BODYTEMP_PROFILE = _R4_SD + "bodytemp"


# --- value types ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mdc:
    """An IEEE 11073-10101 term: 32-bit code (decimal) and its reference id."""

    code: int
    ref_id: str


@dataclass(frozen=True, slots=True)
class Loinc:
    code: str
    display: str


@dataclass(frozen=True, slots=True)
class QuantityTerm:
    """How one ``Quantity.name`` is coded in FHIR."""

    name: str
    mdc: Mdc
    loinc: Loinc
    profile: str  # R4 vital-signs profile URL
    units: frozenset[str]  # UCUM codes the R4 profile accepts (what goes out)


@dataclass(frozen=True, slots=True)
class ComponentTerm:
    """One ``Observation.component`` of a compound measurement, keyed by ``Quantity.name``."""

    name: str
    mdc: Mdc
    loinc: Loinc | None  # None: MDC coding only
    required: bool  # the R4 profile has a 1..1 slice for it (value or dataAbsentReason)


@dataclass(frozen=True, slots=True)
class CompoundTerm:
    """A PhdCompoundNumericObservation: no value of its own, one component per quantity."""

    name: str
    mdc: Mdc
    loinc: Loinc
    profile: str  # R4 vital-signs profile URL
    units: frozenset[str]  # UCUM codes the R4 profile accepts for every component
    components: tuple[ComponentTerm, ...]  # in the order they are written


@dataclass(frozen=True, slots=True)
class BodySite:
    """A SNOMED CT body structure for ``Observation.bodySite``."""

    code: str
    display: str


@dataclass(frozen=True, slots=True)
class KindTerm:
    """Everything a ``Reading.kind`` maps to.

    Quantities named in ``compound`` become components of one compound Observation (written
    first); every other quantity must be in ``numeric`` and becomes its own numeric Observation,
    in reading order. ``sites`` are the body-site names the kind accepts (``None``: a valid name
    that writes no ``bodySite``, e.g. "body, general").
    """

    kind: str
    specialization: Mdc
    numeric: Mapping[str, QuantityTerm]
    compound: CompoundTerm | None
    sites: Mapping[str, BodySite | None]


# --- measured quantities --------------------------------------------------------------------------

QUANTITIES: Mapping[str, QuantityTerm] = MappingProxyType(
    {
        "body-weight": QuantityTerm(
            name="body-weight",
            mdc=Mdc(188736, "MDC_MASS_BODY_ACTUAL"),
            loinc=Loinc("29463-7", "Body weight"),
            profile=BODYWEIGHT_PROFILE,
            units=frozenset({"kg", "g", "[lb_av]"}),  # R4 ucum-bodyweight
        ),
        "body-height": QuantityTerm(
            name="body-height",
            mdc=Mdc(188740, "MDC_LEN_BODY_ACTUAL"),
            loinc=Loinc("8302-2", "Body height"),
            profile=BODYHEIGHT_PROFILE,
            units=frozenset({"cm", "[in_i]"}),  # R4 ucum-bodylength
        ),
        "bmi": QuantityTerm(
            name="bmi",
            mdc=Mdc(188752, "MDC_RATIO_MASS_BODY_LEN_SQ"),
            loinc=Loinc("39156-5", "Body mass index (BMI) [Ratio]"),
            profile=BMI_PROFILE,
            units=frozenset({"kg/m2"}),
        ),
    }
)

NO_SITES: Mapping[str, BodySite | None] = MappingProxyType({})

# --- blood-pressure monitor (specialization 528391) -----------------------------------------------

# One compound Observation (PHD §1.4, R4 ``bp``): systolic and diastolic have 1..1 slices in R4
# ``bp``; the mean arterial pressure has none there (open slicing) but FR Core's ``MeanBP`` slice
# uses LOINC 8478-0, so it gets that coding next to its MDC code.
BLOOD_PRESSURE = CompoundTerm(
    name="blood-pressure",
    mdc=Mdc(150020, "MDC_PRESS_BLD_NONINV"),
    loinc=Loinc("85354-9", "Blood pressure panel with all children optional"),
    profile=BP_PROFILE,
    # R4 ``bp`` fixes mm[Hg]. kPa is refused, not converted: 1 mmHg = 133.322387415 Pa, so a kPa
    # value has no finite decimal in mm[Hg] and any conversion would be a rounding.
    units=frozenset({"mm[Hg]"}),
    components=(
        ComponentTerm(
            name="systolic",
            mdc=Mdc(150021, "MDC_PRESS_BLD_NONINV_SYS"),
            loinc=Loinc("8480-6", "Systolic blood pressure"),
            required=True,
        ),
        ComponentTerm(
            name="diastolic",
            mdc=Mdc(150022, "MDC_PRESS_BLD_NONINV_DIA"),
            loinc=Loinc("8462-4", "Diastolic blood pressure"),
            required=True,
        ),
        ComponentTerm(
            name="mean-arterial-pressure",
            mdc=Mdc(150023, "MDC_PRESS_BLD_NONINV_MEAN"),
            loinc=Loinc("8478-0", "Mean blood pressure"),
            required=False,
        ),
    ),
)

# The pulse rate a blood-pressure monitor reports is its own numeric Observation (PHD §7).
BP_PULSE_QUANTITIES: Mapping[str, QuantityTerm] = MappingProxyType(
    {
        "pulse-rate": QuantityTerm(
            name="pulse-rate",
            mdc=Mdc(149546, "MDC_PULS_RATE_NON_INV"),
            loinc=Loinc("8867-4", "Heart rate"),
            profile=HEARTRATE_PROFILE,
            units=frozenset({"/min"}),
        ),
    }
)

# --- thermometer (specialization 528392) ----------------------------------------------------------

# Always MDC_TEMP_BODY, whatever the site: the site goes to ``bodySite`` only, so the Observation
# code (and with it the PHD identifier) does not depend on whether the site was known.
TEMPERATURE_QUANTITIES: Mapping[str, QuantityTerm] = MappingProxyType(
    {
        "body-temperature": QuantityTerm(
            name="body-temperature",
            mdc=Mdc(150364, "MDC_TEMP_BODY"),
            loinc=Loinc("8310-5", "Body temperature"),
            profile=BODYTEMP_PROFILE,
            units=frozenset({"Cel", "[degF]"}),  # R4 ucum-bodytemp
        ),
    }
)

# Site names a driver may pass for a thermometer: one per Bluetooth Temperature Type (0x2A1D,
# values 1-9), SNOMED CT body structures. "body" (general) names no site: no ``bodySite``.
TEMPERATURE_SITES: Mapping[str, BodySite | None] = MappingProxyType(
    {
        "armpit": BodySite("91470000", "Axillary region structure"),
        "body": None,
        "ear": BodySite("117590005", "Ear structure"),
        "finger": BodySite("7569003", "Finger structure"),
        "gastro-intestinal-tract": BodySite("122865005", "Gastrointestinal tract structure"),
        "mouth": BodySite("74262004", "Oral cavity structure"),
        "rectum": BodySite("34402009", "Rectum structure"),
        "toe": BodySite("29707007", "Toe structure"),
        "tympanum": BodySite("42859004", "Tympanic membrane structure"),
    }
)

# Human-readable ``Quantity.unit`` for each UCUM code we emit (or receive).
UCUM_DISPLAY: Mapping[str, str] = MappingProxyType(
    {
        "kg": "kg",
        "g": "g",
        "[lb_av]": "lb",
        "m": "m",
        "cm": "cm",
        "[in_i]": "in",
        "kg/m2": "kg/m2",
        "mm[Hg]": "mmHg",
        "/min": "/min",
        "Cel": "°C",
        "[degF]": "°F",
    }
)

# Device unit -> (profile unit, power of ten to multiply by). Exact: only the exponent moves.
UNIT_CONVERSIONS: Mapping[str, tuple[str, int]] = MappingProxyType({"m": ("cm", 2)})

# --- devices --------------------------------------------------------------------------------------

PHD_DEVICE_TYPE = Mdc(65573, "MDC_MOC_VMS_MDS_SIMP")
PHG_DEVICE_TYPE = Mdc(531981, "MDC_MOC_VMS_MDS_AHD")
GENERIC_SPECIALIZATION = Mdc(528457, "MDC_DEV_SPEC_PROFILE_GENERIC")

# ``Reading.kind`` -> what it maps to. Weight keeps exactly its original behaviour: every
# quantity of QUANTITIES is its own numeric Observation, in reading order.
KINDS: Mapping[str, KindTerm] = MappingProxyType(
    {
        "weight": KindTerm(
            kind="weight",
            specialization=Mdc(528399, "MDC_DEV_SPEC_PROFILE_SCALE"),
            numeric=QUANTITIES,
            compound=None,
            sites=NO_SITES,
        ),
        "blood-pressure": KindTerm(
            kind="blood-pressure",
            specialization=Mdc(528391, "MDC_DEV_SPEC_PROFILE_BP"),
            numeric=BP_PULSE_QUANTITIES,
            compound=BLOOD_PRESSURE,
            sites=NO_SITES,  # BLS sends no cuff site
        ),
        "body-temperature": KindTerm(
            kind="body-temperature",
            specialization=Mdc(528392, "MDC_DEV_SPEC_PROFILE_TEMP"),
            numeric=TEMPERATURE_QUANTITIES,
            compound=None,
            sites=TEMPERATURE_SITES,
        ),
    }
)

# ``Reading.kind`` -> device specialization (PhdDevice.specialization.systemType).
SPECIALIZATIONS: Mapping[str, Mdc] = MappingProxyType(
    {kind: term.specialization for kind, term in KINDS.items()}
)
SPECIALIZATION_VERSION = "1"  # version of the (virtual) specialization a legacy BLE device maps to

VERSION_HW = Mdc(531974, "MDC_ID_PROD_SPEC_HW")
VERSION_SW = Mdc(531975, "MDC_ID_PROD_SPEC_SW")
VERSION_FW = Mdc(531976, "MDC_ID_PROD_SPEC_FW")

TIME_SYNC_PROTOCOL = Mdc(68220, "MDC_TIME_SYNC_PROTOCOL")

# ``GatewayInfo.time_sync`` -> MDC time-synchronisation method (PHD ValueSet MDCTimeSyncMethods).
TIME_SYNC_METHODS: Mapping[str, Mdc] = MappingProxyType(
    {
        "none": Mdc(532224, "MDC_TIME_SYNC_NONE"),
        "ntpv3": Mdc(532225, "MDC_TIME_SYNC_NTPV3"),
        "ntpv4": Mdc(532226, "MDC_TIME_SYNC_NTPV4"),
        "sntpv4": Mdc(532227, "MDC_TIME_SYNC_SNTPV4"),
        "sntpv4330": Mdc(532228, "MDC_TIME_SYNC_SNTPV4330"),
        "btv1": Mdc(532229, "MDC_TIME_SYNC_BTV1"),
        "radio": Mdc(532230, "MDC_TIME_SYNC_RADIO"),
        "hl7-nck": Mdc(532231, "MDC_TIME_SYNC_HL7_NCK"),
        "cdma": Mdc(532232, "MDC_TIME_SYNC_CDMA"),
        "gsm": Mdc(532233, "MDC_TIME_SYNC_GSM"),
        "ebww": Mdc(532234, "MDC_TIME_SYNC_EBWW"),
        "usb-sof": Mdc(532235, "MDC_TIME_SYNC_USB_SOF"),
        "other": Mdc(532236, "MDC_TIME_SYNC_OTHER"),
        "other-mobile": Mdc(532237, "MDC_TIME_SYNC_OTHER_MOBILE"),
        "gps": Mdc(532238, "MDC_TIME_SYNC_GPS"),
    }
)

# The gateway as a PhgDevice: manufacturer/model describe the gateway *software* (PHD §1.11).
GATEWAY_MANUFACTURER = "edge project"
GATEWAY_MODEL = "edge"

# --- missing values -------------------------------------------------------------------------------

# IEEE-11073 special values (and WSS/BCS "measurement unsuccessful") -> data-absent-reason.
DATA_ABSENT_REASONS: Mapping[Absent, tuple[str, str]] = MappingProxyType(
    {
        Absent.NAN: ("not-a-number", "Not a Number (NaN)"),
        Absent.POSITIVE_INFINITY: ("positive-infinity", "Positive Infinity (PINF)"),
        Absent.NEGATIVE_INFINITY: ("negative-infinity", "Negative Infinity (NINF)"),
        Absent.NRES: ("error", "Error"),
        Absent.RESERVED: ("error", "Error"),
        Absent.UNSUCCESSFUL: ("error", "Error"),
    }
)
UNKNOWN_REASON = ("unknown", "Unknown")  # for a required device element nobody told us
ERROR_REASON = ("error", "Error")  # components of one measurement failing for different reasons


# --- lookups and the unit helper ------------------------------------------------------------------


def quantity_term(name: str) -> QuantityTerm:
    """The coding of a quantity name, or ``MappingError`` if the table does not know it."""
    try:
        return QUANTITIES[name]
    except KeyError:
        raise MappingError(f"unknown quantity name {name!r}") from None


def kind_term(kind: str) -> KindTerm:
    """What a reading kind maps to, or ``MappingError`` if the table does not know it."""
    try:
        return KINDS[kind]
    except KeyError:
        raise MappingError(f"no mapping known for reading kind {kind!r}") from None


def profile_unit(name: str, unit: str) -> tuple[str, int]:
    """UCUM unit the R4 profile of ``name`` wants for a device unit, and the power-of-ten shift.

    ``("kg", 0)`` for a pass-through, ``("cm", 2)`` for a height sent in metres.
    """
    return unit_for(quantity_term(name).units, name, unit)


def unit_for(units: frozenset[str], name: str, unit: str) -> tuple[str, int]:
    """``profile_unit`` for any set of allowed UCUM codes (``name`` is for the message only)."""
    if unit in units:
        return unit, 0
    conversion = UNIT_CONVERSIONS.get(unit)
    if conversion is not None and conversion[0] in units:
        return conversion
    raise MappingError(f"unit {unit!r} is not allowed for {name}")


def to_profile_unit(name: str, value: Decimal, unit: str) -> tuple[Decimal, str]:
    """Convert a device value to the unit the R4 profile wants, exactly.

    The conversion only moves the decimal exponent (``1.750`` m -> ``175.0`` cm), so the number of
    significant digits the device sent is kept and no binary float is ever involved. A result with
    a positive exponent (``2`` m -> ``2E+2``) is written as the plain integer (``200``), because
    exponent notation is legal FHIR but surprises many consumers.
    """
    return convert_to(quantity_term(name).units, name, value, unit)


def convert_to(units: frozenset[str], name: str, value: Decimal, unit: str) -> tuple[Decimal, str]:
    """``to_profile_unit`` for any set of allowed UCUM codes (``name`` is for messages only)."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise MappingError(f"{name}: value must be a finite Decimal")
    target, shift = unit_for(units, name, unit)
    return plain_decimal(value.scaleb(shift) if shift else value), target


def plain_decimal(value: Decimal) -> Decimal:
    """``value`` with a non-positive exponent (same number; ``1.2E+2`` -> ``120``)."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        return Decimal(int(value))
    return value


def time_sync_method(name: str) -> Mdc:
    try:
        return TIME_SYNC_METHODS[name.lower()]
    except KeyError:
        raise MappingError(f"unknown time-sync method {name!r}") from None


def specialization(kind: str) -> Mdc:
    try:
        return SPECIALIZATIONS[kind]
    except KeyError:
        raise MappingError(f"no device specialization known for reading kind {kind!r}") from None
