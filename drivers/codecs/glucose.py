"""Glucose Service values: Glucose Measurement (0x2A18), Glucose Measurement Context (0x2A34)
and Glucose Feature (0x2A51).

Glucose records are *notified* (spec §2, §12.5): they can be lost, so the sequence number is
kept for gap detection and RACP re-fetch (``racp.py``). The concentration is an SFLOAT in kg/L or
mol/L kept as a ``MedFloat``; ``mg_per_dl``/``mmol_per_l`` only shift the decimal exponent, so
they stay exact (``6F B0`` = 111e-5 kg/L = 111 mg/dL, spec §6.1). No molar-mass conversion is
done between the two units. Coded fields (sample type and location, meal, tester, ...) are kept
as raw integers, with enum properties that answer None for RFU codes, because an unknown code
must survive a round trip and does not make the reading itself wrong.

The context's carbohydrate and medication amounts have an unresolved unit ([C] spec §6.2,
§12.11): the GSS says kilogram and litre, the legacy XML and Nordic read the same SFLOAT as grams
and milligrams/millilitres. The SFLOAT carries its own exponent, so only the base unit is in
doubt; this codec keeps the raw mantissa and exponent and deliberately offers no converted value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import IntEnum
from typing import ClassVar, Literal, Self, TypeVar

from . import _bits
from ._cursor import Reader, Writer
from .date_time import DateTime
from .ieee11073 import MedFloat, read_sfloat, write_sfloat

_E = TypeVar("_E", bound=IntEnum)


def _signed16(raw: int) -> int:
    return raw - 0x10000 if raw & 0x8000 else raw


def _shifted(value: MedFloat, places: int) -> Decimal | None:
    """``value`` x 10^``places`` exactly (only the exponent moves); None for a special."""
    if value.special is not None:
        return None
    return MedFloat(value.mantissa, value.exponent + places).value


def _code(enum: type[_E], code: int | None) -> _E | None:
    """The enum member for a raw code; None when absent or not defined (RFU)."""
    if code is None:
        return None
    try:
        return enum(code)
    except ValueError:
        return None


def _check_nibble(value: int, field: str) -> None:
    if not 0 <= value <= 0xF:
        raise ValueError(f"{field} is a 4-bit field (0-15)")


def _check_pair(first: object, second: object, what: str) -> None:
    if (first is None) != (second is None):
        raise ValueError(f"{what} share one flag: give both or neither")


# --- Glucose Measurement (0x2A18) --------------------------------------------------------------

_FLAG_TIME_OFFSET = 0x01
_FLAG_CONCENTRATION = 0x02  # concentration + type/sample location
_FLAG_MOL_PER_L = 0x04
_FLAG_STATUS = 0x08
_FLAG_CONTEXT_FOLLOWS = 0x10
_FLAGS_RFU = 0xE0


class ConcentrationUnit(IntEnum):
    """Flag b2: unit of the concentration SFLOAT (kept even when no concentration is sent)."""

    KG_PER_L = 0
    MOL_PER_L = 1


class SampleType(IntEnum):
    """Defined Type codes (low nibble, spec §6.1); 0 and 11-15 are RFU."""

    CAPILLARY_WHOLE_BLOOD = 1
    CAPILLARY_PLASMA = 2
    VENOUS_WHOLE_BLOOD = 3
    VENOUS_PLASMA = 4
    ARTERIAL_WHOLE_BLOOD = 5
    ARTERIAL_PLASMA = 6
    UNDETERMINED_WHOLE_BLOOD = 7
    UNDETERMINED_PLASMA = 8
    INTERSTITIAL_FLUID = 9
    CONTROL_SOLUTION = 10


class SampleLocation(IntEnum):
    """Defined Sample Location codes (high nibble, spec §6.1); the others are RFU."""

    FINGER = 1
    ALTERNATE_SITE_TEST = 2
    EARLOBE = 3
    CONTROL_SOLUTION = 4
    NOT_AVAILABLE = 15


_STATUS_BITS = (
    "battery_low",
    "sensor_malfunction",
    "sample_size_insufficient",
    "strip_insertion_error",
    "strip_type_incorrect",
    "result_too_high",
    "result_too_low",
    "temperature_too_high",
    "temperature_too_low",
    "read_interrupted",
    "general_device_fault",
    "time_fault",
)
_STATUS_RFU = 0xF000  # bits 12-15
_STATUS_NAME = "Sensor Status Annunciation"


@dataclass(frozen=True, slots=True, kw_only=True)
class GlucoseSensorStatus:
    """The optional Sensor Status Annunciation field (uint16) of 0x2A18, bit by bit (§6.1)."""

    battery_low: bool = False
    sensor_malfunction: bool = False
    sample_size_insufficient: bool = False
    strip_insertion_error: bool = False
    strip_type_incorrect: bool = False
    result_too_high: bool = False  # higher than the device can process
    result_too_low: bool = False  # lower than the device can process
    temperature_too_high: bool = False
    temperature_too_low: bool = False
    read_interrupted: bool = False  # strip pulled too soon
    general_device_fault: bool = False
    time_fault: bool = False  # the time may be inaccurate
    rfu: int = 0  # bits 12-15, in place, as received

    @classmethod
    def from_raw(cls, raw: int) -> Self:
        """Split a 16-bit annunciation word; every pattern is accepted."""
        bits = _bits.split(raw, _STATUS_BITS, width=16, what=_STATUS_NAME)
        return cls(**bits, rfu=raw & _STATUS_RFU)

    @property
    def raw(self) -> int:
        """The 16-bit word; ValueError when ``rfu`` strays outside bits 12-15."""
        return _bits.join(self, _STATUS_BITS, rfu=self.rfu, rfu_mask=_STATUS_RFU, what=_STATUS_NAME)


@dataclass(frozen=True, slots=True, kw_only=True)
class GlucoseMeasurement:
    """One Glucose Measurement notification (0x2A18), raw fields as sent.

    ``concentration``, ``sample_type_code`` and ``sample_location_code`` share flag b1: all three
    are present or all three are None. ``context_follows`` (b4) announces a 0x2A34 with the
    same sequence number.
    """

    CHARACTERISTIC: ClassVar[str] = "2A18"

    sequence_number: int  # uint16, wraps at 65535
    base_time: DateTime  # device wall clock, no time zone
    time_offset: int | None = None  # sint16 minutes; user-facing time = base time + offset
    unit: ConcentrationUnit = ConcentrationUnit.KG_PER_L
    concentration: MedFloat | None = None
    sample_type_code: int | None = None  # low nibble, raw (RFU codes kept)
    sample_location_code: int | None = None  # high nibble, raw (RFU codes kept)
    sensor_status: GlucoseSensorStatus | None = None
    context_follows: bool = False
    rfu_flags: int = 0  # flag bits 5-7, in place, as received
    trailing: bytes = b""  # extra bytes after the last flagged field (tolerated, spec §1.1)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        flags = reader.u8("Flags")
        sequence_number = reader.u16("Sequence Number")
        base_time = DateTime.read(reader, "Base Time")
        time_offset = None
        if flags & _FLAG_TIME_OFFSET:
            time_offset = _signed16(reader.u16("Time Offset"))
        concentration = sample_type_code = sample_location_code = None
        if flags & _FLAG_CONCENTRATION:
            concentration = read_sfloat(reader, "Glucose Concentration")
            nibbles = reader.u8("Type-Sample Location")
            sample_type_code, sample_location_code = nibbles & 0x0F, nibbles >> 4
        sensor_status = None
        if flags & _FLAG_STATUS:
            sensor_status = GlucoseSensorStatus.from_raw(reader.u16("Sensor Status Annunciation"))
        return cls(
            sequence_number=sequence_number,
            base_time=base_time,
            time_offset=time_offset,
            unit=ConcentrationUnit(1 if flags & _FLAG_MOL_PER_L else 0),
            concentration=concentration,
            sample_type_code=sample_type_code,
            sample_location_code=sample_location_code,
            sensor_status=sensor_status,
            context_follows=bool(flags & _FLAG_CONTEXT_FOLLOWS),
            rfu_flags=flags & _FLAGS_RFU,
            trailing=reader.rest(),
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError for fields the wire format cannot carry."""
        if self.rfu_flags & ~_FLAGS_RFU:
            raise ValueError("rfu_flags may only hold flag bits 5-7 (mask 0xE0)")
        _check_pair(self.concentration, self.sample_type_code, "concentration and sample type")
        _check_pair(
            self.concentration, self.sample_location_code, "concentration and sample location"
        )
        writer = Writer()
        writer.u8(self.flags, "Flags")
        writer.u16(self.sequence_number, "Sequence Number")
        self.base_time.write(writer)
        if self.time_offset is not None:
            if not -0x8000 <= self.time_offset <= 0x7FFF:
                raise ValueError("Time Offset is a signed 16-bit number of minutes")
            writer.u16(self.time_offset & 0xFFFF, "Time Offset")
        if self.concentration is not None:
            assert self.sample_type_code is not None and self.sample_location_code is not None
            _check_nibble(self.sample_type_code, "sample_type_code")
            _check_nibble(self.sample_location_code, "sample_location_code")
            write_sfloat(writer, self.concentration)
            writer.u8(self.sample_location_code << 4 | self.sample_type_code)
        if self.sensor_status is not None:
            writer.u16(self.sensor_status.raw, "Sensor Status Annunciation")
        writer.extend(self.trailing)
        return writer.to_bytes()

    @property
    def flags(self) -> int:
        """The flags byte implied by the fields (equals the received one after decode)."""
        flags = self.rfu_flags | (_FLAG_MOL_PER_L if ConcentrationUnit(self.unit) else 0)
        if self.time_offset is not None:
            flags |= _FLAG_TIME_OFFSET
        if self.concentration is not None:
            flags |= _FLAG_CONCENTRATION
        if self.sensor_status is not None:
            flags |= _FLAG_STATUS
        if self.context_follows:
            flags |= _FLAG_CONTEXT_FOLLOWS
        return flags

    @property
    def concentration_value(self) -> Decimal | None:
        """Exact concentration in ``concentration_unit``; None when absent or special."""
        return None if self.concentration is None else self.concentration.value

    @property
    def concentration_unit(self) -> Literal["kg/L", "mol/L"]:
        """UCUM unit of ``concentration_value`` (flag b2)."""
        return "mol/L" if self.unit == ConcentrationUnit.MOL_PER_L else "kg/L"

    @property
    def mg_per_dl(self) -> Decimal | None:
        """Exact mg/dL (1 mg/dL = 1e-5 kg/L) for a kg/L meter; None when absent, special or the
        meter reports mol/L (no molar-mass conversion here)."""
        if self.concentration is None or self.unit != ConcentrationUnit.KG_PER_L:
            return None
        return _shifted(self.concentration, 5)

    @property
    def mmol_per_l(self) -> Decimal | None:
        """Exact mmol/L (mol/L x 1000) for a mol/L meter; None when absent, special or the
        meter reports kg/L."""
        if self.concentration is None or self.unit != ConcentrationUnit.MOL_PER_L:
            return None
        return _shifted(self.concentration, 3)

    @property
    def sample_type(self) -> SampleType | None:
        """The defined sample type; None when absent or an RFU code."""
        return _code(SampleType, self.sample_type_code)

    @property
    def sample_location(self) -> SampleLocation | None:
        """The defined sample location; None when absent or an RFU code."""
        return _code(SampleLocation, self.sample_location_code)

    @property
    def is_control_solution(self) -> bool:
        """Type 10 or location 4: a meter check, never patient data (spec §6.1)."""
        return (
            self.sample_type_code == SampleType.CONTROL_SOLUTION
            or self.sample_location_code == SampleLocation.CONTROL_SOLUTION
        )

    @property
    def user_facing_time(self) -> datetime | None:
        """Base Time + Time Offset as a naive wall-clock datetime (no zone on the wire).

        None when the base date is unknown (year/month/day 0) or the sum leaves datetime's range.
        """
        wall = self.base_time.to_datetime()
        if wall is None:
            return None
        try:
            return wall + timedelta(minutes=self.time_offset or 0)
        except OverflowError:
            return None


# --- Glucose Measurement Context (0x2A34) ------------------------------------------------------

_CTX_CARBOHYDRATE = 0x01
_CTX_MEAL = 0x02
_CTX_TESTER_HEALTH = 0x04
_CTX_EXERCISE = 0x08
_CTX_MEDICATION = 0x10
_CTX_MEDICATION_VOLUME = 0x20
_CTX_HBA1C = 0x40
_CTX_EXTENDED_FLAGS = 0x80

EXERCISE_DURATION_OVERRUN = 0xFFFF


class CarbohydrateId(IntEnum):
    """Defined Carbohydrate ID codes (spec §6.2); 0 and 8-255 are RFU."""

    BREAKFAST = 1
    LUNCH = 2
    DINNER = 3
    SNACK = 4
    DRINK = 5
    SUPPER = 6
    BRUNCH = 7


class Meal(IntEnum):
    """Defined Meal codes (spec §6.2)."""

    PREPRANDIAL = 1
    POSTPRANDIAL = 2
    FASTING = 3
    CASUAL = 4
    BEDTIME = 5


class GlucoseTester(IntEnum):
    """Defined Tester codes (low nibble, spec §6.2)."""

    SELF = 1
    HEALTH_CARE_PROFESSIONAL = 2
    LAB_TEST = 3
    NOT_AVAILABLE = 15


class Health(IntEnum):
    """Defined Health codes (high nibble, spec §6.2)."""

    MINOR_ISSUES = 1
    MAJOR_ISSUES = 2
    DURING_MENSES = 3
    UNDER_STRESS = 4
    NO_ISSUES = 5
    NOT_AVAILABLE = 15


class MedicationId(IntEnum):
    """Defined Medication ID codes (spec §6.2)."""

    RAPID_ACTING_INSULIN = 1
    SHORT_ACTING_INSULIN = 2
    INTERMEDIATE_ACTING_INSULIN = 3
    LONG_ACTING_INSULIN = 4
    PRE_MIXED_INSULIN = 5


class MedicationUnit(IntEnum):
    """Flag b5: the medication SFLOAT is a mass (0) or a volume (1); kept even when absent.

    Mass is kilograms per the GSS, milligrams per the legacy XML/Nordic; volume is litres or
    millilitres ([C] spec §6.2). The codec does not pick one.
    """

    MASS = 0
    VOLUME = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class GlucoseMeasurementContext:
    """One Glucose Measurement Context notification (0x2A34), raw fields as sent.

    Pairs that share one flag are both present or both None: carbohydrate ID + amount (b0),
    tester + health (b2), exercise duration + intensity (b3), medication ID + amount (b4). The
    Extended Flags byte (b7, all RFU) comes *before* the carbohydrate fields. Carbohydrate and
    medication amounts are raw ``MedFloat`` on purpose: see the module note on their unit.
    """

    CHARACTERISTIC: ClassVar[str] = "2A34"

    sequence_number: int  # matches the 0x2A18 record it annotates
    extended_flags: int | None = None  # b7; every bit RFU, kept raw
    carbohydrate_id_code: int | None = None
    carbohydrate: MedFloat | None = None  # kg (GSS) or g (legacy XML): see module note
    meal_code: int | None = None
    tester_code: int | None = None  # low nibble
    health_code: int | None = None  # high nibble
    exercise_duration: int | None = None  # seconds; 0xFFFF = overrun
    exercise_intensity: int | None = None  # percent
    medication_id_code: int | None = None
    medication: MedFloat | None = None  # unit per ``medication_unit``: see module note
    medication_unit: MedicationUnit = MedicationUnit.MASS
    hba1c: MedFloat | None = None  # percent
    trailing: bytes = b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        flags = reader.u8("Flags")
        sequence_number = reader.u16("Sequence Number")
        extended_flags = reader.u8("Extended Flags") if flags & _CTX_EXTENDED_FLAGS else None
        carbohydrate_id_code = carbohydrate = None
        if flags & _CTX_CARBOHYDRATE:
            carbohydrate_id_code = reader.u8("Carbohydrate ID")
            carbohydrate = read_sfloat(reader, "Carbohydrate")
        meal_code = reader.u8("Meal") if flags & _CTX_MEAL else None
        tester_code = health_code = None
        if flags & _CTX_TESTER_HEALTH:
            nibbles = reader.u8("Tester-Health")
            tester_code, health_code = nibbles & 0x0F, nibbles >> 4
        exercise_duration = exercise_intensity = None
        if flags & _CTX_EXERCISE:
            exercise_duration = reader.u16("Exercise Duration")
            exercise_intensity = reader.u8("Exercise Intensity")
        medication_id_code = medication = None
        if flags & _CTX_MEDICATION:
            medication_id_code = reader.u8("Medication ID")
            medication = read_sfloat(reader, "Medication")
        hba1c = read_sfloat(reader, "HbA1c") if flags & _CTX_HBA1C else None
        return cls(
            sequence_number=sequence_number,
            extended_flags=extended_flags,
            carbohydrate_id_code=carbohydrate_id_code,
            carbohydrate=carbohydrate,
            meal_code=meal_code,
            tester_code=tester_code,
            health_code=health_code,
            exercise_duration=exercise_duration,
            exercise_intensity=exercise_intensity,
            medication_id_code=medication_id_code,
            medication=medication,
            medication_unit=MedicationUnit(1 if flags & _CTX_MEDICATION_VOLUME else 0),
            hba1c=hba1c,
            trailing=reader.rest(),
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError for fields the wire format cannot carry."""
        _check_pair(self.carbohydrate_id_code, self.carbohydrate, "carbohydrate ID and amount")
        _check_pair(self.tester_code, self.health_code, "tester and health")
        _check_pair(self.exercise_duration, self.exercise_intensity, "exercise fields")
        _check_pair(self.medication_id_code, self.medication, "medication ID and amount")
        writer = Writer()
        writer.u8(self.flags, "Flags")
        writer.u16(self.sequence_number, "Sequence Number")
        if self.extended_flags is not None:
            writer.u8(self.extended_flags, "Extended Flags")
        if self.carbohydrate_id_code is not None and self.carbohydrate is not None:
            writer.u8(self.carbohydrate_id_code, "Carbohydrate ID")
            write_sfloat(writer, self.carbohydrate)
        if self.meal_code is not None:
            writer.u8(self.meal_code, "Meal")
        if self.tester_code is not None and self.health_code is not None:
            _check_nibble(self.tester_code, "tester_code")
            _check_nibble(self.health_code, "health_code")
            writer.u8(self.health_code << 4 | self.tester_code)
        if self.exercise_duration is not None and self.exercise_intensity is not None:
            writer.u16(self.exercise_duration, "Exercise Duration")
            writer.u8(self.exercise_intensity, "Exercise Intensity")
        if self.medication_id_code is not None and self.medication is not None:
            writer.u8(self.medication_id_code, "Medication ID")
            write_sfloat(writer, self.medication)
        if self.hba1c is not None:
            write_sfloat(writer, self.hba1c)
        writer.extend(self.trailing)
        return writer.to_bytes()

    @property
    def flags(self) -> int:
        """The flags byte implied by the fields (equals the received one after decode)."""
        flags = _CTX_MEDICATION_VOLUME if MedicationUnit(self.medication_unit) else 0
        present = (
            (self.carbohydrate, _CTX_CARBOHYDRATE),
            (self.meal_code, _CTX_MEAL),
            (self.tester_code, _CTX_TESTER_HEALTH),
            (self.exercise_duration, _CTX_EXERCISE),
            (self.medication, _CTX_MEDICATION),
            (self.hba1c, _CTX_HBA1C),
            (self.extended_flags, _CTX_EXTENDED_FLAGS),
        )
        for value, bit in present:
            if value is not None:
                flags |= bit
        return flags

    @property
    def carbohydrate_id(self) -> CarbohydrateId | None:
        """The defined carbohydrate ID; None when absent or RFU."""
        return _code(CarbohydrateId, self.carbohydrate_id_code)

    @property
    def meal(self) -> Meal | None:
        """The defined meal; None when absent or RFU."""
        return _code(Meal, self.meal_code)

    @property
    def tester(self) -> GlucoseTester | None:
        """The defined tester; None when absent or RFU."""
        return _code(GlucoseTester, self.tester_code)

    @property
    def health(self) -> Health | None:
        """The defined health state; None when absent or RFU."""
        return _code(Health, self.health_code)

    @property
    def medication_id(self) -> MedicationId | None:
        """The defined medication; None when absent or RFU."""
        return _code(MedicationId, self.medication_id_code)

    @property
    def exercise_overrun(self) -> bool:
        """Exercise duration present and 0xFFFF: longer than the field can count."""
        return self.exercise_duration == EXERCISE_DURATION_OVERRUN

    @property
    def hba1c_percent(self) -> Decimal | None:
        """Exact HbA1c in percent; None when absent or special."""
        return None if self.hba1c is None else self.hba1c.value


# --- Glucose Feature (0x2A51) ------------------------------------------------------------------

_FEATURE_BITS = (
    "low_battery_detection",
    "sensor_malfunction_detection",
    "sample_size_detection",
    "strip_insertion_error_detection",
    "strip_type_error_detection",
    "result_high_low_detection",
    "temperature_high_low_detection",
    "read_interrupt_detection",
    "general_device_fault",
    "time_fault",
    "multiple_bonds",
)
_FEATURE_RFU = 0xF800  # bits 11-15


@dataclass(frozen=True, slots=True, kw_only=True)
class GlucoseFeature:
    """Glucose Feature (0x2A51): which Sensor Status bits the meter can report (spec §6.3)."""

    CHARACTERISTIC: ClassVar[str] = "2A51"

    low_battery_detection: bool = False
    sensor_malfunction_detection: bool = False
    sample_size_detection: bool = False
    strip_insertion_error_detection: bool = False
    strip_type_error_detection: bool = False
    result_high_low_detection: bool = False
    temperature_high_low_detection: bool = False
    read_interrupt_detection: bool = False
    general_device_fault: bool = False
    time_fault: bool = False
    multiple_bonds: bool = False
    rfu: int = 0  # bits 11-15, in place, as received
    trailing: bytes = b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        bits = reader.u16("Glucose Feature")
        named = {name: bool(bits & 1 << i) for i, name in enumerate(_FEATURE_BITS)}
        return cls(**named, rfu=bits & _FEATURE_RFU, trailing=reader.rest())

    def encode(self) -> bytes:
        """Rebuild the value; ValueError when ``rfu`` strays outside bits 11-15."""
        if self.rfu & ~_FEATURE_RFU:
            raise ValueError("rfu may only hold bits 11-15 (mask 0xF800)")
        writer = Writer()
        writer.u16(self.bits, "Glucose Feature")
        writer.extend(self.trailing)
        return writer.to_bytes()

    @property
    def bits(self) -> int:
        """The 16-bit feature word (equals the received one after decode)."""
        bits = self.rfu
        for i, name in enumerate(_FEATURE_BITS):
            if getattr(self, name):
                bits |= 1 << i
        return bits
