"""Every code, system and URL the mappers write, in one table.

Sources (see ``/work/shared/specs/fhir-mapping.md``): MDC numbers are 32-bit
``partition * 65536 + term`` values written in decimal (§2.8, §3); LOINC codes and R4 profile
URLs are the FHIR R4 vital-signs ones (§3); PHD URLs are those of the PHD IG 2.0 (§1.14), with the
PHD 1.x variants kept where a later profile set (ANS / PHD 1.0) needs them.

Codes the spec does not list (glucose specimens and context, BITS status bits, body composition,
device status) carry their source in the comment above their table; a code that could not be
confirmed is left out, and the mapper refuses what would need it (``KindTerm.unmapped``).

Everything here is immutable (frozen dataclasses, ``MappingProxyType``, ``frozenset``): the
mappers read it, nobody writes it. Tests check the code/display pairs against their own literal
copy, so a slip here (say, a heart-rate LOINC on a weight) fails loudly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
# IEEE 11073 BITS as codes ``<MDC type>.<bit>`` (PHD 2.0 §1.6; PHD 1.x used the IG-local URL).
ASN1_TO_HL7_SYSTEM = "http://terminology.hl7.org/CodeSystem/ASN1ToHL7"
# Measurement-status interpretations: the URL PhdBaseObservation fixes for its
# ``interpretation.coding[MsmtStatusInterpretation]`` slice (PHD2 StructureDefinition.
# PhdBaseObservation.fsh); the PoCD ballot later moved the code system to THO, PHD did not.
MEASUREMENT_STATUS_SYSTEM = "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status"
ACT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

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
# PhdBaseObservation extension[CoincidentTimeStamp] (PHD 2.0 §1.2; PHD 1.x used derivedFrom).
COINCIDENT_TIME_STAMP_EXTENSION = _PHD_SD + "CoincidentTimeStampReference"
PHD_NUMERIC_OBSERVATION_PROFILE = _PHD_SD + "PhdNumericObservation"
PHD_COMPOUND_NUMERIC_OBSERVATION_PROFILE = _PHD_SD + "PhdCompoundNumericObservation"
PHD_CODED_ENUMERATION_OBSERVATION_PROFILE = _PHD_SD + "PhdCodedEnumerationObservation"
PHD_BITS_ENUMERATION_OBSERVATION_PROFILE = _PHD_SD + "PhdBitsEnumerationObservation"
PHD_COINCIDENT_TIME_STAMP_OBSERVATION_PROFILE = _PHD_SD + "PhdCoincidentTimeStampObservation"
PHD_DEVICE_PROFILE = _PHD_SD + "PhdDevice"
PHG_DEVICE_PROFILE = _PHD_SD + "PhgDevice"

_R4_SD = "http://hl7.org/fhir/StructureDefinition/"
BODYWEIGHT_PROFILE = _R4_SD + "bodyweight"
BODYHEIGHT_PROFILE = _R4_SD + "bodyheight"
BMI_PROFILE = _R4_SD + "bmi"
BP_PROFILE = _R4_SD + "bp"
HEARTRATE_PROFILE = _R4_SD + "heartrate"
BODYTEMP_PROFILE = _R4_SD + "bodytemp"
OXYGENSAT_PROFILE = _R4_SD + "oxygensat"


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


_NO_LOINC_BY_UNIT: Mapping[str, Loinc] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class QuantityTerm:
    """How one ``Quantity.name`` is coded in FHIR.

    ``profile`` is the R4 vital-signs profile (and with it the ``vital-signs`` category); ``None``
    for a measurement that is no vital sign (glucose, body fat...): PHD category and profile only.
    ``loinc`` is the LOINC coding written after the MDC one (``None``: MDC coding only), unless
    ``loinc_by_unit`` names another one for the UCUM unit that goes out (glucose: mass vs molar).
    ``extra_loinc`` are further LOINC codings written after it (SpO2: the pulse-oximetry code).
    """

    name: str
    mdc: Mdc
    loinc: Loinc | None
    profile: str | None  # R4 vital-signs profile URL, or None for a non-vital-sign measurement
    units: frozenset[str]  # UCUM codes the profile accepts (what goes out)
    loinc_by_unit: Mapping[str, Loinc] = field(default_factory=lambda: _NO_LOINC_BY_UNIT)
    extra_loinc: tuple[Loinc, ...] = ()

    @property
    def vital_sign(self) -> bool:
        return self.profile is not None

    def loinc_for(self, unit: str) -> Loinc | None:
        """The LOINC coding for the UCUM unit written (mass and molar glucose differ)."""
        return self.loinc_by_unit.get(unit, self.loinc)


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
class StatusBit:
    """One named bit of an IEEE 11073 BITS measurement (PHD ``ASN1ToHL7`` code ``<type>.<bit>``).

    ``bit`` is the ASN.1 (MDER) bit number, bit 0 being the most significant bit; ``asn1_name`` is
    the name the ASN1ToHL7 code system gives it (written as the coding's display).
    """

    name: str  # the name drivers put in ``Reading.status``
    bit: int
    asn1_name: str


@dataclass(frozen=True, slots=True)
class StatusTerm:
    """The device/measurement status BITS observation of one kind (PhdBitsEnumerationObservation).

    ``time_fault`` names a status that says the record's time stamp is untrustworthy: it has no
    bit of its own (see ``mappers.status``).
    """

    mdc: Mdc  # the BITS observation type, e.g. MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS
    bits: Mapping[str, StatusBit]  # keyed by ``StatusBit.name``
    time_fault: str | None = None


@dataclass(frozen=True, slots=True)
class ContextTerm:
    """A coded context of a measurement, written as a PhdCodedEnumerationObservation.

    ``values`` maps the value names drivers use to their MDC code; ``None`` marks a value the
    device can report but whose MDC code could not be confirmed: it is written as
    ``Observation.note`` text on the measurement instead of a coded Observation.
    """

    key: str  # the key drivers put in ``Reading.context``
    mdc: Mdc  # the Observation code, e.g. MDC_CTXT_GLU_MEAL
    label: str  # for the note of an uncoded value
    values: Mapping[str, Mdc | None]


@dataclass(frozen=True, slots=True)
class KindTerm:
    """Everything a ``Reading.kind`` maps to.

    Quantities named in ``compound`` become components of one compound Observation (written
    first); every other quantity must be in ``numeric`` and becomes its own numeric Observation,
    in reading order. ``sites`` are the body-site names the kind accepts (``None``: a valid name
    that writes no ``bodySite``, e.g. "body, general").

    ``specimens`` (context key ``specimen``) replace the term of the quantity ``specimen_of``
    (glucose: the MDC/LOINC code depends on the sample type); ``numeric`` holds the default.
    ``contexts`` are the other context keys the kind accepts, ``status`` its BITS observation.
    ``unmapped`` are quantity names a driver may send that have no confirmed code: refused with
    the reason given (rather than an "unknown name" error).
    """

    kind: str
    specialization: Mdc
    numeric: Mapping[str, QuantityTerm]
    compound: CompoundTerm | None
    sites: Mapping[str, BodySite | None]
    status: StatusTerm | None = None
    contexts: Mapping[str, ContextTerm] = field(default_factory=lambda: NO_CONTEXTS)
    specimens: Mapping[str, QuantityTerm] = field(default_factory=lambda: NO_SPECIMENS)
    specimen_of: str | None = None
    unmapped: Mapping[str, str] = field(default_factory=lambda: NO_UNMAPPED)


NO_CONTEXTS: Mapping[str, ContextTerm] = MappingProxyType({})
NO_SPECIMENS: Mapping[str, QuantityTerm] = MappingProxyType({})
NO_UNMAPPED: Mapping[str, str] = MappingProxyType({})


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

# --- glucose meter (specialization 528401) --------------------------------------------------------

# MDC numbers: partition 2 (SCADA) terms of IEEE 11073-10417 as listed in the 20601 nomenclature
# headers (folterj/IEEE11073Analyser phd/nomenclature.h: MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD 29112 ...
# MDC_CONC_GLU_ISF 29140), so 2 * 65536 + term. The two "undetermined" sample types (terms 29292,
# 29296) are later 10417 additions: 160368 is the code of the PHD IG glucose example
# (HL7/phd input/examples/glucose-observation.json); 29292 -> 160364 is listed the same way by
# several independent 11073 code lists. 160192 (venous whole blood) is also the type of a Charité
# KDS DeviceMetric example. LOINC: capillary readings are the meter codes 41653-7 / 14743-9 (spec
# §3, gematik VS_HddtMivBloodGlucoseMeasurement); the other blood specimens use the generic blood
# (2339-0 / 15074-8) or serum-plasma (2345-7 / 14749-6) codes of the same value set (spec §3);
# interstitial fluid uses 99504-3 / 105272-9 (HL7 CGM IG profiles.fsh, gematik CGM value set).
_GLUCOSE_UNITS = frozenset({"mg/dL", "mmol/L"})
_LOINC_CAPILLARY = MappingProxyType(
    {
        "mg/dL": Loinc("41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer"),
        "mmol/L": Loinc("14743-9", "Glucose [Moles/volume] in Capillary blood by Glucometer"),
    }
)
_LOINC_BLOOD = MappingProxyType(
    {
        "mg/dL": Loinc("2339-0", "Glucose [Mass/volume] in Blood"),
        "mmol/L": Loinc("15074-8", "Glucose [Moles/volume] in Blood"),
    }
)
_LOINC_PLASMA = MappingProxyType(
    {
        "mg/dL": Loinc("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
        "mmol/L": Loinc("14749-6", "Glucose [Moles/volume] in Serum or Plasma"),
    }
)
_LOINC_ISF = MappingProxyType(
    {
        "mg/dL": Loinc("99504-3", "Glucose [Mass/volume] in Interstitial fluid"),
        "mmol/L": Loinc("105272-9", "Glucose [Moles/volume] in Interstitial fluid"),
    }
)


def _glucose(mdc: Mdc, loinc: Mapping[str, Loinc]) -> QuantityTerm:
    # Not a vital sign: no R4 profile, PHD category only (PHD glucose-observation.json example).
    return QuantityTerm(
        name="glucose", mdc=mdc, loinc=None, profile=None, units=_GLUCOSE_UNITS, loinc_by_unit=loinc
    )


# ``("specimen", name)`` context -> the glucose term. Names follow the Bluetooth GLS Type field
# (capillary/venous/arterial/undetermined whole blood or plasma, interstitial fluid); its "control
# solution" is not patient data and has no entry (a MappingError).
GLUCOSE_SPECIMENS: Mapping[str, QuantityTerm] = MappingProxyType(
    {
        "capillary-whole-blood": _glucose(
            Mdc(160184, "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD"), _LOINC_CAPILLARY
        ),
        "capillary-plasma": _glucose(
            Mdc(160188, "MDC_CONC_GLU_CAPILLARY_PLASMA"), _LOINC_CAPILLARY
        ),
        "venous-whole-blood": _glucose(Mdc(160192, "MDC_CONC_GLU_VENOUS_WHOLEBLOOD"), _LOINC_BLOOD),
        "venous-plasma": _glucose(Mdc(160196, "MDC_CONC_GLU_VENOUS_PLASMA"), _LOINC_PLASMA),
        "arterial-whole-blood": _glucose(
            Mdc(160200, "MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD"), _LOINC_BLOOD
        ),
        "arterial-plasma": _glucose(Mdc(160204, "MDC_CONC_GLU_ARTERIAL_PLASMA"), _LOINC_PLASMA),
        "undetermined-whole-blood": _glucose(
            Mdc(160364, "MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD"), _LOINC_BLOOD
        ),
        "undetermined-plasma": _glucose(
            Mdc(160368, "MDC_CONC_GLU_UNDETERMINED_PLASMA"), _LOINC_PLASMA
        ),
        "interstitial-fluid": _glucose(Mdc(160212, "MDC_CONC_GLU_ISF"), _LOINC_ISF),
    }
)
# A reading without a specimen: the PHD IG's own glucose-meter example code (undetermined
# plasma). It claims no sampling site, and meters report plasma-equivalent values as a rule.
DEFAULT_GLUCOSE_SPECIMEN = "undetermined-plasma"

GLUCOSE_QUANTITIES: Mapping[str, QuantityTerm] = MappingProxyType(
    {"glucose": GLUCOSE_SPECIMENS[DEFAULT_GLUCOSE_SPECIMEN]}
)

# Glucose context (Bluetooth GLS Glucose Measurement Context / IEEE 11073-10417 context objects),
# partition 128 (PHD_DM) terms: 128 * 65536 + term, terms from the 20601 nomenclature header
# (folterj/IEEE11073Analyser phd/nomenclature.h: MDC_CTXT_GLU_MEAL 29256 ... TESTER_LAB 29288).
# MDC_CTXT_GLU_MEAL 8417864 and ..._POSTPRANDIAL 8417872 are attested by the PHD IG
# (input/examples/meal-context-observation.json), which fixes the arithmetic. MENSES (term 29224,
# the gap that header leaves between MAJOR 29220 and STRESS 29228) is given by independent 11073
# code lists. BEDTIME has two conflicting terms in secondary sources (29300 vs 29261) and none in
# a primary one: not coded, it becomes a note (``None``).
GLUCOSE_CONTEXTS: Mapping[str, ContextTerm] = MappingProxyType(
    {
        "meal": ContextTerm(
            key="meal",
            mdc=Mdc(8417864, "MDC_CTXT_GLU_MEAL"),
            label="Meal context",
            values=MappingProxyType(
                {
                    "preprandial": Mdc(8417868, "MDC_CTXT_GLU_MEAL_PREPRANDIAL"),
                    "postprandial": Mdc(8417872, "MDC_CTXT_GLU_MEAL_POSTPRANDIAL"),
                    "fasting": Mdc(8417876, "MDC_CTXT_GLU_MEAL_FASTING"),
                    "casual": Mdc(8417880, "MDC_CTXT_GLU_MEAL_CASUAL"),
                    "bedtime": None,
                }
            ),
        ),
        "tester": ContextTerm(
            key="tester",
            mdc=Mdc(8417884, "MDC_CTXT_GLU_TESTER"),
            label="Tester",
            values=MappingProxyType(
                {
                    "self": Mdc(8417888, "MDC_CTXT_GLU_TESTER_SELF"),
                    "health-care-professional": Mdc(8417892, "MDC_CTXT_GLU_TESTER_HCP"),
                    "lab": Mdc(8417896, "MDC_CTXT_GLU_TESTER_LAB"),
                }
            ),
        ),
        "health": ContextTerm(
            key="health",
            mdc=Mdc(8417820, "MDC_CTXT_GLU_HEALTH"),
            label="Health",
            values=MappingProxyType(
                {
                    "minor-issues": Mdc(8417824, "MDC_CTXT_GLU_HEALTH_MINOR"),
                    "major-issues": Mdc(8417828, "MDC_CTXT_GLU_HEALTH_MAJOR"),
                    "menses": Mdc(8417832, "MDC_CTXT_GLU_HEALTH_MENSES"),
                    "stress": Mdc(8417836, "MDC_CTXT_GLU_HEALTH_STRESS"),
                    "none": Mdc(8417840, "MDC_CTXT_GLU_HEALTH_NONE"),
                }
            ),
        ),
        "sample-location": ContextTerm(
            key="sample-location",
            mdc=Mdc(8417844, "MDC_CTXT_GLU_SAMPLELOCATION"),
            label="Sample location",
            values=MappingProxyType(
                {
                    "finger": Mdc(8417848, "MDC_CTXT_GLU_SAMPLELOCATION_FINGER"),
                    "alternate-site": Mdc(8417852, "MDC_CTXT_GLU_SAMPLELOCATION_AST"),
                    "earlobe": Mdc(8417856, "MDC_CTXT_GLU_SAMPLELOCATION_EARLOBE"),
                }
            ),
        ),
    }
)
# Sample locations that also go to ``bodySite`` of the glucose Observation (SNOMED CT; the same
# finger code as the thermometer table). "alternate-site" names no single structure and no
# earlobe code could be confirmed: those two are carried by the coded context Observation only.
GLUCOSE_SAMPLE_SITES: Mapping[str, BodySite] = MappingProxyType(
    {"finger": BodySite("7569003", "Finger structure")}
)

# Glucose meter status, MDC_GLU_METER_DEV_STATUS 128::29144 = 8417752. Bits from the PHD IG
# ASN1ToHL7 code system (HL7/phd input/fsh/CodeSystem.ASN1ToHL7.fsh and
# intro-notes/CodeSystem-ASN1ToHL7-intro.md, "Glucose Meter Device and Sensor status"), which
# follow the 11073-10417 ASN.1 bit numbers; names are the Bluetooth GLS Sensor Status Annunciation
# ones (GLS bits 0-10 are the same conditions in the same order). GLS bit 11 "time fault" has no
# 10417 bit (10417 bit 11 is sensor-temp-out-of-range): it is ``time_fault``, see mappers.status.
GLUCOSE_STATUS = StatusTerm(
    mdc=Mdc(8417752, "MDC_GLU_METER_DEV_STATUS"),
    bits=MappingProxyType(
        {
            bit.name: bit
            for bit in (
                StatusBit("device-battery-low", 0, "device-battery-low"),
                StatusBit("sensor-malfunction", 1, "sensor-malfunction"),
                StatusBit("sample-size-insufficient", 2, "sensor-sample-size-insufficient"),
                StatusBit("strip-insertion-error", 3, "sensor-strip-insertion"),
                StatusBit("strip-type-incorrect", 4, "sensor-strip-type-incorrect"),
                StatusBit("result-too-high", 5, "sensor-result-too-high"),
                StatusBit("result-too-low", 6, "sensor-result-too-low"),
                StatusBit("sensor-temperature-too-high", 7, "sensor-temp-too-high"),
                StatusBit("sensor-temperature-too-low", 8, "sensor-temp-too-low"),
                StatusBit("read-interrupted", 9, "sensor-read-interrupt"),
                StatusBit("general-device-fault", 10, "device-gen-fault"),
            )
        }
    ),
    time_fault="time-fault",
)

# --- continuous glucose monitor (specialization 528409) -------------------------------------------

# MDC_CONC_GLU_ISF (spec §3, §7) with the CGM LOINC codes of the HL7 CGM IG (99504-3 mass,
# 105272-9 molar). Trend (mg/dL/min) and quality (%) have no confirmed MDC code: refused.
CGM_QUANTITIES: Mapping[str, QuantityTerm] = MappingProxyType(
    {"glucose": _glucose(Mdc(160212, "MDC_CONC_GLU_ISF"), _LOINC_ISF)}
)
CGM_UNMAPPED: Mapping[str, str] = MappingProxyType(
    {
        "glucose-trend": "no confirmed MDC code for the CGM glucose trend",
        "cgm-quality": "no confirmed MDC code for the CGM quality",
    }
)

# CGM status, MDC_CGM_DEV_STAT 128::29452 = 8418060: the bits the PHD IG ASN1ToHL7 code system
# defines ("Continuous Glucose Monitor Device and Sensor status"). Its bits 1, 5 and 6 (and the
# Bluetooth CGMS battery-low / general-fault / time-sync flags) are not defined there: refused.
CGM_STATUS = StatusTerm(
    mdc=Mdc(8418060, "MDC_CGM_DEV_STAT"),
    bits=MappingProxyType(
        {
            bit.name: bit
            for bit in (
                StatusBit("session-stopped", 0, "sensor-session-stopped"),
                StatusBit("sensor-type-incorrect", 2, "sensor-type-incorrect"),
                StatusBit("sensor-malfunction", 3, "sensor-malfunction"),
                StatusBit("device-specific-alert", 4, "device-specific-alert"),
                StatusBit("calibration-not-allowed", 7, "sensor-calibration-not-allowed"),
                StatusBit("calibration-recommended", 8, "sensor-calibration-recommended"),
                StatusBit("calibration-required", 9, "sensor-calibration-required"),
                StatusBit("sensor-temperature-too-high", 10, "sensor-temp-too-high"),
                StatusBit("sensor-temperature-too-low", 11, "sensor-temp-too-low"),
                StatusBit("result-below-patient-low", 12, "sensor-result-below-patient-low"),
                StatusBit("result-above-patient-high", 13, "sensor-result-above-patient-high"),
                StatusBit("result-below-hypo", 14, "sensor-low-hypo"),
                StatusBit("result-above-hyper", 15, "sensor-high-hyper"),
                StatusBit("rate-of-decrease-exceeded", 16, "sensor-rate-decrease-exceeded"),
                StatusBit("rate-of-increase-exceeded", 17, "sensor-rate-increase-exceeded"),
                StatusBit("result-too-low", 18, "sensor-result-too-low"),
                StatusBit("result-too-high", 19, "sensor-result-too-high"),
                StatusBit("communication-out-of-range", 20, "sensor-com-out-of-range"),
            )
        }
    ),
)

# --- pulse oximeter (specialization 528388) -------------------------------------------------------

# SpO2 150456 (2::19384) and the oximeter pulse 149530 (2::18458): spec §3, PHD example
# bundle-continuousnonin.json. LOINC 2708-6 is what R4 ``oxygensat`` fixes; 59408-5 (by pulse
# oximetry) follows it (spec §3, dk-core LoincBasicObservation). The oximeter pulse is not the BP
# monitor's (149546): both map to LOINC 8867-4 (PHD §2.8), the MDC code keeps them apart.
SPO2_QUANTITIES: Mapping[str, QuantityTerm] = MappingProxyType(
    {
        "spo2": QuantityTerm(
            name="spo2",
            mdc=Mdc(150456, "MDC_PULS_OXIM_SAT_O2"),
            loinc=Loinc("2708-6", "Oxygen saturation in Arterial blood"),
            profile=OXYGENSAT_PROFILE,
            units=frozenset({"%"}),
            extra_loinc=(
                Loinc("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
            ),
        ),
        "pulse-rate": QuantityTerm(
            name="pulse-rate",
            mdc=Mdc(149530, "MDC_PULS_OXIM_PULS_RATE"),
            loinc=Loinc("8867-4", "Heart rate"),
            profile=HEARTRATE_PROFILE,
            units=frozenset({"/min"}),
        ),
    }
)
SPO2_UNMAPPED: Mapping[str, str] = MappingProxyType(
    {"pulse-amplitude-index": "no confirmed MDC code for the pulse amplitude index"}
)

# Pulse oximeter status, MDC_PULS_OXIM_DEV_STATUS 2::19532 = 150604: all 16 bits of the PHD IG
# ASN1ToHL7 code system ("Pulse Oximeter Device and Sensor status"), names as the ASN.1 ones.
# (The Bluetooth PLXS Device and Sensor Status field lists the same 16 conditions in reverse
# order: PLXS bit 15 "sensor disconnected" is 10404 bit 0.)
SPO2_STATUS = StatusTerm(
    mdc=Mdc(150604, "MDC_PULS_OXIM_DEV_STATUS"),
    bits=MappingProxyType(
        {
            bit.name: bit
            for bit in (
                StatusBit(name, number, name)
                for number, name in enumerate(
                    (
                        "sensor-disconnected",
                        "sensor-malfunction",
                        "sensor-displaced",
                        "sensor-unsupported",
                        "sensor-off",
                        "sensor-interference",
                        "signal-searching",
                        "signal-pulse-questionable",
                        "signal-non-pulsatile",
                        "signal-erratic",
                        "signal-low-perfusion",
                        "signal-poor",
                        "signal-inadequate",
                        "signal-processing-irregularity",
                        "device-equipment-malfunction",
                        "device-extended-update",
                    )
                )
            )
        }
    ),
)

# --- body composition analyser (specialization 528404) --------------------------------------------

# Body fat 188748 (2::57676, spec §3, antidote nomenclature.h) with LOINC 41982-0 (spec §3's
# suggested code; no R4 profile). Fat-free mass, soft lean mass and body water are the 20601-era
# IEEE 11073-10420 terms 57684 / 57688 / 57692 (partition 2), as several independent 11073 code
# lists give them; no LOINC code could be confirmed for them (MDC coding only). Muscle mass and
# percentage, impedance and basal metabolism appear in a single secondary list, "not in 20601",
# contradicted by another: refused.
_BODY_MASS_UNITS = frozenset({"kg", "[lb_av]"})
BODY_COMPOSITION_QUANTITIES: Mapping[str, QuantityTerm] = MappingProxyType(
    {
        **QUANTITIES,
        "body-fat": QuantityTerm(
            name="body-fat",
            mdc=Mdc(188748, "MDC_BODY_FAT"),
            loinc=Loinc("41982-0", "Percentage of body fat Measured"),
            profile=None,
            units=frozenset({"%"}),
        ),
        "fat-free-mass": QuantityTerm(
            name="fat-free-mass",
            mdc=Mdc(188756, "MDC_MASS_BODY_FAT_FREE"),
            loinc=None,
            profile=None,
            units=_BODY_MASS_UNITS,
        ),
        "soft-lean-mass": QuantityTerm(
            name="soft-lean-mass",
            mdc=Mdc(188760, "MDC_MASS_BODY_SOFT_LEAN"),
            loinc=None,
            profile=None,
            units=_BODY_MASS_UNITS,
        ),
        "body-water-mass": QuantityTerm(
            name="body-water-mass",
            mdc=Mdc(188764, "MDC_BODY_WATER"),
            loinc=None,
            profile=None,
            units=_BODY_MASS_UNITS,
        ),
    }
)
BODY_COMPOSITION_UNMAPPED: Mapping[str, str] = MappingProxyType(
    {
        name: f"no confirmed MDC code for {name}"
        for name in ("muscle-mass", "muscle-percentage", "impedance", "basal-metabolism")
    }
)

# --- blood-pressure measurement status ------------------------------------------------------------

# MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS 128::22000 = 8410608, bits 0-5 from the PHD IG ASN1ToHL7
# code system (input/fsh/CodeSystem.ASN1ToHL7.fsh; example input/examples/bpm-status.json). The
# names are those of the Bluetooth BLS Measurement Status flags, which are the same bits.
BLOOD_PRESSURE_STATUS = StatusTerm(
    mdc=Mdc(8410608, "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS"),
    bits=MappingProxyType(
        {
            bit.name: bit
            for bit in (
                StatusBit("body-movement", 0, "body-movement"),
                StatusBit("cuff-too-loose", 1, "cuff-too-loose"),
                StatusBit("irregular-pulse", 2, "irregular-pulse"),
                StatusBit("pulse-rate-above-range", 3, "pulse-over-range-limit"),
                StatusBit("pulse-rate-below-range", 4, "pulse-under-range-limit"),
                StatusBit("improper-position", 5, "improper-body-position"),
            )
        }
    ),
)

# --- measurement-status conditions ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    """What a measurement-status condition does to every measurement Observation of a reading.

    PHD 2.0 PhdBaseObservation notes, "Measurement Status" table (spec §2.7). ``absent`` is the
    data-absent-reason (code, display) that replaces the values; ``interpretation`` a PoCD
    measurement-status (code, display); ``status`` the Observation status; ``test_data`` asks for
    ``meta.security`` HTEST.
    """

    name: str
    status: str | None = None
    absent: tuple[str, str] | None = None
    interpretation: tuple[str, str] | None = None
    test_data: bool = False


CONDITIONS: Mapping[str, Condition] = MappingProxyType(
    {
        c.name: c
        for c in (
            Condition("invalid-measurement", status="entered-in-error", absent=("error", "Error")),
            Condition("questionable-measurement", interpretation=("questionable", "Questionable")),
            Condition("measurement-unavailable", absent=("not-performed", "Not Performed")),
            Condition(
                "calibration-ongoing",
                interpretation=("calibration-ongoing", "Calibration ongoing"),
            ),
            Condition(
                "early-estimate",
                status="preliminary",
                interpretation=("early-indication", "Early indication"),
            ),
            Condition("demonstration-data", test_data=True),
            Condition("testing-data", test_data=True),
        )
    }
)
HTEST = ("HTEST", "test health data")  # v3-ActReason, PhdBaseObservation meta.security[PhdHtest]

# --- device status (not patient data) -------------------------------------------------------------

# Battery level, MDC_ATTR_VAL_BATT_CHARGE 1::2460 = 67996 (antidote nomenclature.h; PHD example
# bundle-continuousnonin.json), in %.
BATTERY_CHARGE = Mdc(67996, "MDC_ATTR_VAL_BATT_CHARGE")

# Coincident time stamp clock type. A Bluetooth Current Time Service clock is a wall clock with no
# UTC offset: MDC_ATTR_TIME_ABS 1::2439 = 67975, the one code both the required value set
# MDCClockTypes {67975, 68226, 67983, 68072} (HL7/phd ValueSet.MDCClockTypes.fsh) and the profile
# notes table (67975 "wall clock without DST and time zone offset") agree on. The offset wall
# clock is where they disagree: the notes give 68225 = 1::2689 MDC_ATTR_TIME_BO, the value set
# 68226 = 1::2690 MDC_ATTR_TIME_STAMP_BO (folterj/IEEE11073Analyser phd/nomenclature.h), and a
# validator would reject 68225. No device here reports an offset, so neither is ever written.
CLOCK_TYPE_WALL_CLOCK = Mdc(67975, "MDC_ATTR_TIME_ABS")

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
        "mg/dL": "mg/dL",
        "mmol/L": "mmol/L",
        "%": "%",
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
            status=BLOOD_PRESSURE_STATUS,
        ),
        "body-temperature": KindTerm(
            kind="body-temperature",
            specialization=Mdc(528392, "MDC_DEV_SPEC_PROFILE_TEMP"),
            numeric=TEMPERATURE_QUANTITIES,
            compound=None,
            sites=TEMPERATURE_SITES,
        ),
        "blood-glucose": KindTerm(
            kind="blood-glucose",
            specialization=Mdc(528401, "MDC_DEV_SPEC_PROFILE_GLUCOSE"),
            numeric=GLUCOSE_QUANTITIES,
            compound=None,
            sites=NO_SITES,  # the sample location is a context, not ``Reading.site``
            status=GLUCOSE_STATUS,
            contexts=GLUCOSE_CONTEXTS,
            specimens=GLUCOSE_SPECIMENS,
            specimen_of="glucose",
        ),
        "cgm": KindTerm(
            kind="cgm",
            specialization=Mdc(528409, "MDC_DEV_SPEC_PROFILE_CGM"),
            numeric=CGM_QUANTITIES,
            compound=None,
            sites=NO_SITES,
            status=CGM_STATUS,
            unmapped=CGM_UNMAPPED,
        ),
        "spo2": KindTerm(
            kind="spo2",
            specialization=Mdc(528388, "MDC_DEV_SPEC_PROFILE_PULS_OXIM"),
            numeric=SPO2_QUANTITIES,
            compound=None,
            sites=NO_SITES,
            status=SPO2_STATUS,
            unmapped=SPO2_UNMAPPED,
        ),
        "body-composition": KindTerm(
            kind="body-composition",
            specialization=Mdc(528404, "MDC_DEV_SPEC_PROFILE_BCA"),
            numeric=BODY_COMPOSITION_QUANTITIES,
            compound=None,
            sites=NO_SITES,
            unmapped=BODY_COMPOSITION_UNMAPPED,
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
