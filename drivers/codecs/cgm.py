"""Continuous Glucose Monitoring Service values: CGM Measurement (0x2AA7), Feature (0x2AA8),
Status (0x2AA9), Session Start Time (0x2AAA), Session Run Time (0x2AAB) and the Specific Ops
Control Point (0x2AAC).

A CGM Measurement notification holds one *or more* Size-delimited records (spec §7.1), so the
value decodes to a tuple of records, and ``CgmMeasurement.decode_records`` isolates a bad record
whose Size still lets the next one be found: the driver keeps the good records and reports the
bad one. Every CGMS value may end in an E2E-CRC (CRC-16/MCRF4XX, spec §1.5) whose presence only
CGM Feature b12 tells for sure; decoders take ``crc=True/False`` from the driver, and ``None``
infers it from the length (what Nordic's client does). A CRC that does not verify is a
``DecodeError``: the value was corrupted and none of it may be used. Decoded CRCs are kept, so
``decode(x).encode() == x``; a model built with ``crc=None`` gets its CRC computed on encode.
The annunciation octets follow the LSO reading (Status, Cal/Temp, Warning, spec §7.1 [C]); the
raw octets stay available in wire order for sensors known to order them differently.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum
from typing import ClassVar, Literal, Self

from ._cursor import Reader, Writer
from .date_time import DateTime
from .e2e_crc import CRC_SIZE, read_crc, write_crc
from .errors import DecodeError
from .ieee11073 import MedFloat, read_sfloat, write_sfloat

CRC_NOT_SUPPORTED = 0xFFFF  # CGM Feature's always-present CRC field without b12 (spec §7.2)
MIN_RECORD_SIZE = 6
TIME_ZONE_UNKNOWN = -128
DST_UNKNOWN = 0xFF
INTERVAL_DISABLED = 0x00  # SOCP communication interval: periodic communication off
INTERVAL_FASTEST = 0xFF  # SOCP communication interval: fastest the sensor supports
CALIBRATION_RECORD_LAST = 0xFFFF  # SOCP get calibration value: the most recent record

GLUCOSE_UNIT: Literal["mg/dL"] = "mg/dL"
RATE_UNIT: Literal["mg/dL/min"] = "mg/dL/min"


def _finish(reader: Reader, start: int, crc: bool | None, name: str) -> tuple[bool, int | None]:
    """The optional E2E-CRC closing a fixed-layout value; ``None`` infers it from the length.

    Anything left beyond the CRC is refused before the CRC is checked, so a wrong length is
    reported as such rather than as a CRC mismatch.
    """
    present = reader.remaining > 0 if crc is None else crc
    if not present:
        reader.expect_end(name)
        return False, None
    if reader.remaining > CRC_SIZE:
        left = reader.remaining - CRC_SIZE
        at = reader.offset + CRC_SIZE
        raise reader.error(name, f"expected end of value, {left} bytes left", at)
    return True, read_crc(reader, start)


def _write_crc(writer: Writer, e2e_crc: bool, crc: int | None) -> None:
    if e2e_crc:
        write_crc(writer, 0, crc)
    elif crc is not None:
        raise ValueError("crc given but e2e_crc is False")


def _nibbles(raw: int) -> tuple[int, int]:
    """Low nibble first (Type), then high nibble (Sample Location) (spec §1.1)."""
    return raw & 0x0F, raw >> 4


def _pack_nibbles(low: int, high: int, field: str) -> int:
    if not (0 <= low <= 0x0F and 0 <= high <= 0x0F):
        raise ValueError(f"{field} holds two 4-bit codes (0..15)")
    return high << 4 | low


# --- Type and Sample Location ------------------------------------------------------------------


class CgmType(IntEnum):
    """The glucose sample types of the Type nibble (spec §6.1, shared by CGMS §7.2)."""

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


class CgmSampleLocation(IntEnum):
    """The Sample Location nibble; CGMS adds subcutaneous tissue to the glucose list (§7.2)."""

    FINGER = 1
    ALTERNATE_SITE_TEST = 2
    EARLOBE = 3
    CONTROL_SOLUTION = 4
    SUBCUTANEOUS_TISSUE = 5
    NOT_AVAILABLE = 15


_TYPE_TEXT = {
    CgmType.CAPILLARY_WHOLE_BLOOD: "capillary whole blood",
    CgmType.CAPILLARY_PLASMA: "capillary plasma",
    CgmType.VENOUS_WHOLE_BLOOD: "venous whole blood",
    CgmType.VENOUS_PLASMA: "venous plasma",
    CgmType.ARTERIAL_WHOLE_BLOOD: "arterial whole blood",
    CgmType.ARTERIAL_PLASMA: "arterial plasma",
    CgmType.UNDETERMINED_WHOLE_BLOOD: "undetermined whole blood",
    CgmType.UNDETERMINED_PLASMA: "undetermined plasma",
    CgmType.INTERSTITIAL_FLUID: "interstitial fluid (ISF)",
    CgmType.CONTROL_SOLUTION: "control solution",
}
_LOCATION_TEXT = {
    CgmSampleLocation.FINGER: "finger",
    CgmSampleLocation.ALTERNATE_SITE_TEST: "alternate site test (AST)",
    CgmSampleLocation.EARLOBE: "earlobe",
    CgmSampleLocation.CONTROL_SOLUTION: "control solution",
    CgmSampleLocation.SUBCUTANEOUS_TISSUE: "subcutaneous tissue",
    CgmSampleLocation.NOT_AVAILABLE: "not available",
}
_TYPE_CODES = frozenset(t.value for t in CgmType)
_LOCATION_CODES = frozenset(loc.value for loc in CgmSampleLocation)
_RESERVED = "reserved"


def _type(code: int) -> CgmType | None:
    return CgmType(code) if code in _TYPE_CODES else None


def _location(code: int) -> CgmSampleLocation | None:
    return CgmSampleLocation(code) if code in _LOCATION_CODES else None


def _type_text(code: int) -> str:
    sample_type = _type(code)
    return _RESERVED if sample_type is None else _TYPE_TEXT[sample_type]


def _location_text(code: int) -> str:
    location = _location(code)
    return _RESERVED if location is None else _LOCATION_TEXT[location]


def _control_solution(sample_type: int, sample_location: int) -> bool:
    """Control-solution readings must never be stored as patient data (spec §6.1)."""
    return (
        sample_type == CgmType.CONTROL_SOLUTION
        or sample_location == CgmSampleLocation.CONTROL_SOLUTION
    )


# --- Sensor Status Annunciation / CGM Status bits ----------------------------------------------

_ANNUNCIATION_BITS: dict[int, str] = {
    0: "session_stopped",
    1: "device_battery_low",
    2: "sensor_type_incorrect",
    3: "sensor_malfunction",
    4: "device_specific_alert",
    5: "general_device_fault",
    8: "time_synchronization_required",
    9: "calibration_not_allowed",
    10: "calibration_recommended",
    11: "calibration_required",
    12: "sensor_temperature_too_high",
    13: "sensor_temperature_too_low",
    16: "result_lower_than_patient_low_level",
    17: "result_higher_than_patient_high_level",
    18: "result_lower_than_hypo_level",
    19: "result_higher_than_hyper_level",
    20: "rate_of_decrease_exceeded",
    21: "rate_of_increase_exceeded",
    22: "result_lower_than_device_can_process",
    23: "result_higher_than_device_can_process",
}
_ANNUNCIATION_RFU = 0x00C0C0  # bits 6-7 and 14-15


@dataclass(frozen=True, slots=True)
class CgmAnnunciation:
    """The 24-bit CGM status map: Status octet (bits 0-7), Cal/Temp (8-15), Warning (16-23).

    Used whole by CGM Status (0x2AA9) and, assembled from the octets a record carries (absent
    octets read as 0), by each CGM Measurement record (spec §7.1).
    """

    raw: int = 0

    @classmethod
    def from_octets(cls, status: int | None, cal_temp: int | None, warning: int | None) -> Self:
        """Assemble the map from a record's octets; an absent octet contributes no bits."""
        return cls((status or 0) | (cal_temp or 0) << 8 | (warning or 0) << 16)

    def _bit(self, n: int) -> bool:
        return bool(self.raw >> n & 1)

    @property
    def status_octet(self) -> int:
        return self.raw & 0xFF

    @property
    def cal_temp_octet(self) -> int:
        return self.raw >> 8 & 0xFF

    @property
    def warning_octet(self) -> int:
        return self.raw >> 16 & 0xFF

    @property
    def rfu(self) -> int:
        """Reserved bits 6-7 and 14-15, in place, as received."""
        return self.raw & _ANNUNCIATION_RFU

    @property
    def active(self) -> tuple[str, ...]:
        """Names of the defined bits that are set, in bit order."""
        return tuple(name for bit, name in _ANNUNCIATION_BITS.items() if self._bit(bit))

    @property
    def session_stopped(self) -> bool:
        return self._bit(0)

    @property
    def device_battery_low(self) -> bool:
        return self._bit(1)

    @property
    def sensor_type_incorrect(self) -> bool:
        return self._bit(2)

    @property
    def sensor_malfunction(self) -> bool:
        return self._bit(3)

    @property
    def device_specific_alert(self) -> bool:
        return self._bit(4)

    @property
    def general_device_fault(self) -> bool:
        return self._bit(5)

    @property
    def time_synchronization_required(self) -> bool:
        return self._bit(8)

    @property
    def calibration_not_allowed(self) -> bool:
        return self._bit(9)

    @property
    def calibration_recommended(self) -> bool:
        return self._bit(10)

    @property
    def calibration_required(self) -> bool:
        return self._bit(11)

    @property
    def sensor_temperature_too_high(self) -> bool:
        return self._bit(12)

    @property
    def sensor_temperature_too_low(self) -> bool:
        return self._bit(13)

    @property
    def result_lower_than_patient_low_level(self) -> bool:
        return self._bit(16)

    @property
    def result_higher_than_patient_high_level(self) -> bool:
        return self._bit(17)

    @property
    def result_lower_than_hypo_level(self) -> bool:
        return self._bit(18)

    @property
    def result_higher_than_hyper_level(self) -> bool:
        return self._bit(19)

    @property
    def rate_of_decrease_exceeded(self) -> bool:
        return self._bit(20)

    @property
    def rate_of_increase_exceeded(self) -> bool:
        return self._bit(21)

    @property
    def result_lower_than_device_can_process(self) -> bool:
        return self._bit(22)

    @property
    def result_higher_than_device_can_process(self) -> bool:
        return self._bit(23)


# --- CGM Measurement (0x2AA7) ------------------------------------------------------------------

_CHAR_MEASUREMENT = "2AA7"
_FLAG_TREND = 0x01
_FLAG_QUALITY = 0x02
_FLAGS_RFU = 0x1C
_FLAG_WARNING = 0x20
_FLAG_CAL_TEMP = 0x40
_FLAG_STATUS = 0x80


def _value(v: MedFloat | None) -> Decimal | None:
    return None if v is None else v.value


@dataclass(frozen=True, slots=True, kw_only=True)
class CgmRecord:
    """One Size-delimited record of a CGM Measurement value, raw fields as sent.

    ``trailing`` holds octets the Size covers beyond the flagged fields (before the CRC); they
    are only accepted when the CRC presence is known, since under inference they would make
    the CRC ambiguous.
    """

    glucose: MedFloat  # mg/dL
    time_offset: int  # minutes since the Session Start Time
    status_octet: int | None = None  # flag b7, annunciation bits 0-7
    cal_temp_octet: int | None = None  # flag b6, annunciation bits 8-15
    warning_octet: int | None = None  # flag b5, annunciation bits 16-23
    trend: MedFloat | None = None  # flag b0, (mg/dL)/min
    quality: MedFloat | None = None  # flag b1, %
    e2e_crc: bool = False  # the record ends in an E2E-CRC (CGM Feature b12)
    crc: int | None = None  # as received; None: computed on encode when e2e_crc
    rfu_flags: int = 0  # flag bits 2-4, in place, as received
    trailing: bytes = b""

    @classmethod
    def decode(cls, data: bytes, *, crc: bool | None = None) -> Self:
        """Exactly one record whose Size covers the whole value."""
        data = bytes(data)
        end = _record_end(data, 0)
        if end != len(data):
            raise DecodeError(_CHAR_MEASUREMENT, "Size", 0, "does not cover the value", data)
        return cls._read(data, 0, end, crc)

    @classmethod
    def _read(cls, data: bytes, start: int, end: int, crc: bool | None) -> Self:
        """The record in ``data[start:end]``; errors name offsets in the whole value."""
        reader = Reader(data[:end], _CHAR_MEASUREMENT)
        reader.take(start, "Size")
        try:
            return cls._read_fields(reader, start, crc)
        except DecodeError as exc:  # re-issued with the whole value for quarantine
            raise DecodeError(exc.characteristic, exc.field, exc.offset, exc.reason, data) from None

    @classmethod
    def _read_fields(cls, reader: Reader, start: int, crc: bool | None) -> Self:
        size = reader.u8("Size")
        flags = reader.u8("Flags")
        glucose = read_sfloat(reader, "Glucose Concentration")
        time_offset = reader.u16("Time Offset")
        status = reader.u8("Status Octet") if flags & _FLAG_STATUS else None
        cal_temp = reader.u8("Cal/Temp Octet") if flags & _FLAG_CAL_TEMP else None
        warning = reader.u8("Warning Octet") if flags & _FLAG_WARNING else None
        trend = read_sfloat(reader, "CGM Trend Information") if flags & _FLAG_TREND else None
        quality = read_sfloat(reader, "CGM Quality") if flags & _FLAG_QUALITY else None
        computed = reader.offset - start
        if crc is None:
            if size not in (computed, computed + CRC_SIZE):
                reason = "matches the flagged fields neither with nor without an E2E-CRC"
                raise reader.error("Size", reason, start)
            crc = size == computed + CRC_SIZE
        fields_end = start + size - (CRC_SIZE if crc else 0)
        trailing = reader.take(max(fields_end - reader.offset, 0), "Trailing")
        received = read_crc(reader, start) if crc else None
        return cls(
            glucose=glucose,
            time_offset=time_offset,
            status_octet=status,
            cal_temp_octet=cal_temp,
            warning_octet=warning,
            trend=trend,
            quality=quality,
            e2e_crc=crc,
            crc=received,
            rfu_flags=flags & _FLAGS_RFU,
            trailing=trailing,
        )

    def encode(self) -> bytes:
        """Rebuild the record; ValueError for fields the wire format cannot carry."""
        if self.rfu_flags & ~_FLAGS_RFU:
            raise ValueError("rfu_flags may only hold flag bits 2-4 (mask 0x1C)")
        writer = Writer()
        writer.u8(self.size, "Size")
        writer.u8(self.flags, "Flags")
        write_sfloat(writer, self.glucose)
        writer.u16(self.time_offset, "Time Offset")
        for octet, name in (
            (self.status_octet, "Status Octet"),
            (self.cal_temp_octet, "Cal/Temp Octet"),
            (self.warning_octet, "Warning Octet"),
        ):
            if octet is not None:
                writer.u8(octet, name)
        if self.trend is not None:
            write_sfloat(writer, self.trend)
        if self.quality is not None:
            write_sfloat(writer, self.quality)
        writer.extend(self.trailing)
        _write_crc(writer, self.e2e_crc, self.crc)
        return writer.to_bytes()

    @property
    def flags(self) -> int:
        """The flags byte implied by the fields (equals the received one after decode)."""
        flags = self.rfu_flags
        for present, bit in (
            (self.trend, _FLAG_TREND),
            (self.quality, _FLAG_QUALITY),
            (self.warning_octet, _FLAG_WARNING),
            (self.cal_temp_octet, _FLAG_CAL_TEMP),
            (self.status_octet, _FLAG_STATUS),
        ):
            if present is not None:
                flags |= bit
        return flags

    @property
    def size(self) -> int:
        """The Size field: octets of the record, Size and CRC included."""
        octets = (self.status_octet, self.cal_temp_octet, self.warning_octet)
        size = MIN_RECORD_SIZE + sum(o is not None for o in octets) + len(self.trailing)
        size += 2 * ((self.trend is not None) + (self.quality is not None) + self.e2e_crc)
        return size

    @property
    def annunciation_octets(self) -> bytes:
        """The annunciation octets in wire order (for remapping sensors that order them
        Warning-first, spec §7.1 [C])."""
        octets = (self.status_octet, self.cal_temp_octet, self.warning_octet)
        return bytes(o for o in octets if o is not None)

    @property
    def annunciation(self) -> CgmAnnunciation:
        """The 24-bit status map; absent octets contribute no bits."""
        return CgmAnnunciation.from_octets(
            self.status_octet, self.cal_temp_octet, self.warning_octet
        )

    @property
    def glucose_value(self) -> Decimal | None:
        """Exact glucose concentration in mg/dL; None for an SFLOAT special."""
        return self.glucose.value

    @property
    def glucose_unit(self) -> Literal["mg/dL"]:
        return GLUCOSE_UNIT

    @property
    def trend_value(self) -> Decimal | None:
        """Exact rate of change in (mg/dL)/min; None when absent or special."""
        return _value(self.trend)

    @property
    def trend_unit(self) -> Literal["mg/dL/min"]:
        return RATE_UNIT

    @property
    def quality_value(self) -> Decimal | None:
        """Exact CGM quality in percent; None when absent or special."""
        return _value(self.quality)

    @property
    def quality_unit(self) -> Literal["%"]:
        return "%"


def _record_end(data: bytes, start: int) -> int:
    """Where the record at ``start`` ends; a Size that cannot delimit it stops the whole value."""
    if start >= len(data):
        raise DecodeError(_CHAR_MEASUREMENT, "Size", start, "needs 1 bytes, 0 left", data)
    size = data[start]
    if size < MIN_RECORD_SIZE:
        raise DecodeError(_CHAR_MEASUREMENT, "Size", start, "below the 6-octet minimum", data)
    if start + size > len(data):
        raise DecodeError(_CHAR_MEASUREMENT, "Size", start, "runs past the end of the value", data)
    return start + size


@dataclass(frozen=True, slots=True)
class CgmMeasurement:
    """One CGM Measurement notification (0x2AA7): one or more records, in order."""

    CHARACTERISTIC: ClassVar[str] = _CHAR_MEASUREMENT

    records: tuple[CgmRecord, ...]

    @classmethod
    def decode(cls, data: bytes, *, crc: bool | None = None) -> Self:
        """All records or nothing: the first bad record raises its DecodeError.

        ``crc`` is CGM Feature b12 when known; ``None`` infers it per record from the Size.
        """
        results = cls.decode_records(data, crc=crc)
        records = [r for r in results if isinstance(r, CgmRecord)]
        for result in results:
            if isinstance(result, DecodeError):
                raise result
        return cls(tuple(records))

    @classmethod
    def decode_records(
        cls, data: bytes, *, crc: bool | None = None
    ) -> list[CgmRecord | DecodeError]:
        """Each record or its DecodeError, in wire order, so the good ones can be kept.

        A record that fails inside its Size (bad CRC, fields overrunning it) is skipped and the
        next one is read; a Size that cannot delimit a record (below 6, past the end) ends the
        list with its error, since nothing after it can be located.
        """
        data = bytes(data)
        results: list[CgmRecord | DecodeError] = []
        start = 0
        while True:
            try:
                end = _record_end(data, start)
            except DecodeError as exc:
                results.append(exc)
                return results
            try:
                results.append(CgmRecord._read(data, start, end, crc))
            except DecodeError as exc:
                results.append(exc)
            if end == len(data):
                return results
            start = end

    def encode(self) -> bytes:
        """The records back to back; ValueError when there are none."""
        if not self.records:
            raise ValueError("a CGM Measurement holds at least one record")
        return b"".join(record.encode() for record in self.records)


# --- CGM Feature (0x2AA8) ----------------------------------------------------------------------

_FEATURE_BITS = (
    "calibration",
    "patient_high_low_alerts",
    "hypo_alerts",
    "hyper_alerts",
    "rate_of_change_alerts",
    "device_specific_alert",
    "sensor_malfunction_detection",
    "sensor_temperature_high_low_detection",
    "sensor_result_high_low_detection",
    "low_battery_detection",
    "sensor_type_error_detection",
    "general_device_fault",
    "e2e_crc",
    "multiple_bond",
    "multiple_sessions",
    "trend_information",
    "quality",
)
_FEATURE_E2E_CRC = 1 << 12
_FEATURE_RFU = 0xFE0000  # bits 17-23


@dataclass(frozen=True, slots=True, kw_only=True)
class CgmFeature:
    """CGM Feature (0x2AA8): read first, since b12 decides whether every other CGMS value ends
    in an E2E-CRC (spec §2, §7.2).

    Its own CRC field is always present: checked when b12 is set, otherwise a placeholder kept
    as received (0xFFFF per the spec).
    """

    CHARACTERISTIC: ClassVar[str] = "2AA8"

    calibration: bool = False
    patient_high_low_alerts: bool = False
    hypo_alerts: bool = False
    hyper_alerts: bool = False
    rate_of_change_alerts: bool = False
    device_specific_alert: bool = False
    sensor_malfunction_detection: bool = False
    sensor_temperature_high_low_detection: bool = False
    sensor_result_high_low_detection: bool = False
    low_battery_detection: bool = False
    sensor_type_error_detection: bool = False
    general_device_fault: bool = False
    e2e_crc: bool = False
    multiple_bond: bool = False
    multiple_sessions: bool = False
    trend_information: bool = False
    quality: bool = False
    rfu: int = 0  # bits 17-23, in place, as received
    sample_type: int = 0  # Type nibble (CgmType codes)
    sample_location: int = 0  # Sample Location nibble (CgmSampleLocation codes)
    crc: int | None = None  # as received; None: computed (b12) or 0xFFFF on encode

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        bits = reader.u24("CGM Feature")
        sample_type, sample_location = _nibbles(reader.u8("Type-Sample Location"))
        if reader.remaining > CRC_SIZE:
            left = reader.remaining - CRC_SIZE
            raise reader.error("CGM Feature", f"expected end of value, {left} bytes left", 6)
        crc = read_crc(reader, 0) if bits & _FEATURE_E2E_CRC else reader.u16("E2E-CRC")
        return cls(
            calibration=bool(bits & 1 << 0),
            patient_high_low_alerts=bool(bits & 1 << 1),
            hypo_alerts=bool(bits & 1 << 2),
            hyper_alerts=bool(bits & 1 << 3),
            rate_of_change_alerts=bool(bits & 1 << 4),
            device_specific_alert=bool(bits & 1 << 5),
            sensor_malfunction_detection=bool(bits & 1 << 6),
            sensor_temperature_high_low_detection=bool(bits & 1 << 7),
            sensor_result_high_low_detection=bool(bits & 1 << 8),
            low_battery_detection=bool(bits & 1 << 9),
            sensor_type_error_detection=bool(bits & 1 << 10),
            general_device_fault=bool(bits & 1 << 11),
            e2e_crc=bool(bits & 1 << 12),
            multiple_bond=bool(bits & 1 << 13),
            multiple_sessions=bool(bits & 1 << 14),
            trend_information=bool(bits & 1 << 15),
            quality=bool(bits & 1 << 16),
            rfu=bits & _FEATURE_RFU,
            sample_type=sample_type,
            sample_location=sample_location,
            crc=crc,
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError for fields the wire format cannot carry."""
        if self.rfu & ~_FEATURE_RFU:
            raise ValueError("rfu may only hold bits 17-23 (mask 0xFE0000)")
        writer = Writer()
        writer.u24(self.bits, "CGM Feature")
        writer.u8(_pack_nibbles(self.sample_type, self.sample_location, "Type-Sample Location"))
        if self.e2e_crc:
            write_crc(writer, 0, self.crc)
        else:
            writer.u16(CRC_NOT_SUPPORTED if self.crc is None else self.crc, "E2E-CRC")
        return writer.to_bytes()

    @property
    def bits(self) -> int:
        """The 24-bit feature word (equals the received one after decode)."""
        bits = self.rfu
        for i, name in enumerate(_FEATURE_BITS):
            if getattr(self, name):
                bits |= 1 << i
        return bits

    @property
    def glucose_type(self) -> CgmType | None:
        """The sample type; None for a reserved code."""
        return _type(self.sample_type)

    @property
    def glucose_type_text(self) -> str:
        """Spec wording ("arterial plasma") or "reserved"."""
        return _type_text(self.sample_type)

    @property
    def site(self) -> CgmSampleLocation | None:
        """The sample location; None for a reserved code."""
        return _location(self.sample_location)

    @property
    def sample_location_text(self) -> str:
        """Spec wording ("subcutaneous tissue") or "reserved"."""
        return _location_text(self.sample_location)


# --- CGM Status (0x2AA9), Session Start Time (0x2AAA), Session Run Time (0x2AAB) ---------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CgmStatus:
    """CGM Status (0x2AA9): the sensor's current status map; all three octets always present."""

    CHARACTERISTIC: ClassVar[str] = "2AA9"

    time_offset: int  # minutes since the Session Start Time
    status: CgmAnnunciation
    e2e_crc: bool = False
    crc: int | None = None  # as received; None: computed on encode when e2e_crc

    @classmethod
    def decode(cls, data: bytes, *, crc: bool | None = None) -> Self:
        """``crc`` is CGM Feature b12 when known; ``None`` infers it from the length."""
        reader = Reader(data, cls.CHARACTERISTIC)
        time_offset = reader.u16("Time Offset")
        status = CgmAnnunciation(reader.u24("CGM Status"))
        e2e_crc, received = _finish(reader, 0, crc, "CGM Status")
        return cls(time_offset=time_offset, status=status, e2e_crc=e2e_crc, crc=received)

    def encode(self) -> bytes:
        writer = Writer()
        writer.u16(self.time_offset, "Time Offset")
        writer.u24(self.status.raw, "CGM Status")
        _write_crc(writer, self.e2e_crc, self.crc)
        return writer.to_bytes()


_DST_MINUTES = {0: 0, 2: 30, 4: 60, 8: 120}


@dataclass(frozen=True, slots=True, kw_only=True)
class CgmSessionStartTime:
    """CGM Session Start Time (0x2AAA): the collector's local time when the session started.

    Every record's Time Offset counts from here, so the zone matters: Time Zone is the standard
    offset in 15-minute steps (-128 unknown) and DST Offset a code (0, 2, 4, 8 = +0, +0.5, +1,
    +2 h; 255 unknown); other codes are kept raw (spec §1.4, §7.4).
    """

    CHARACTERISTIC: ClassVar[str] = "2AAA"

    start: DateTime
    time_zone: int = TIME_ZONE_UNKNOWN  # sint8, 15-minute steps
    dst_offset: int = DST_UNKNOWN  # uint8 code
    e2e_crc: bool = False
    crc: int | None = None  # as received; None: computed on encode when e2e_crc

    @classmethod
    def decode(cls, data: bytes, *, crc: bool | None = None) -> Self:
        """``crc`` is CGM Feature b12 when known; ``None`` infers it from the length."""
        reader = Reader(data, cls.CHARACTERISTIC)
        start = DateTime.read(reader, "Session Start Time")
        time_zone = int.from_bytes(reader.take(1, "Time Zone"), "little", signed=True)
        dst_offset = reader.u8("DST Offset")
        e2e_crc, received = _finish(reader, 0, crc, "CGM Session Start Time")
        return cls(
            start=start, time_zone=time_zone, dst_offset=dst_offset, e2e_crc=e2e_crc, crc=received
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError for fields the wire format cannot carry."""
        if not -128 <= self.time_zone <= 127:
            raise ValueError("Time Zone is a signed 8-bit field")
        writer = Writer()
        self.start.write(writer)
        writer.u8(self.time_zone & 0xFF, "Time Zone")
        writer.u8(self.dst_offset, "DST Offset")
        _write_crc(writer, self.e2e_crc, self.crc)
        return writer.to_bytes()

    @classmethod
    def from_datetime(cls, dt: datetime, *, e2e_crc: bool = False) -> Self:
        """From an aware datetime: wall clock, standard offset and DST filled from its zone.

        A zone without DST information (a fixed offset) counts as standard time. ValueError
        for a naive datetime or offsets the wire cannot express (15-minute steps, DST codes).
        """
        offset = dt.utcoffset()
        if offset is None:
            raise ValueError("Session Start Time needs an aware datetime to fill its time zone")
        dst = dt.dst() or timedelta(0)
        dst_minutes, rest = divmod(dst, timedelta(minutes=1))
        codes = {minutes: code for code, minutes in _DST_MINUTES.items()}
        if rest or dst_minutes not in codes:
            raise ValueError("DST offset must be 0, 0.5, 1 or 2 hours")
        quarters, rest = divmod(offset - dst, timedelta(minutes=15))
        if rest or not -127 <= quarters <= 127:
            raise ValueError("time zone must be a whole number of 15-minute steps")
        return cls(
            start=DateTime.from_datetime(dt.replace(tzinfo=None)),
            time_zone=quarters,
            dst_offset=codes[dst_minutes],
            e2e_crc=e2e_crc,
        )

    @property
    def dst_minutes(self) -> int | None:
        """The DST offset in minutes; None when unknown or a reserved code."""
        return _DST_MINUTES.get(self.dst_offset)

    @property
    def utc_offset(self) -> timedelta | None:
        """Time zone plus DST; None when either is unknown (or a reserved DST code)."""
        dst = self.dst_minutes
        if self.time_zone == TIME_ZONE_UNKNOWN or dst is None:
            return None
        return timedelta(minutes=15 * self.time_zone + dst)

    def to_datetime(self) -> datetime | None:
        """The aware start time; None when the date or the offset is unknown."""
        wall = self.start.to_datetime()
        offset = self.utc_offset
        if wall is None or offset is None or abs(offset) >= timedelta(hours=24):
            return None
        return wall.replace(tzinfo=timezone(offset))


@dataclass(frozen=True, slots=True, kw_only=True)
class CgmSessionRunTime:
    """CGM Session Run Time (0x2AAB): expected session length in hours."""

    CHARACTERISTIC: ClassVar[str] = "2AAB"

    hours: int
    e2e_crc: bool = False
    crc: int | None = None  # as received; None: computed on encode when e2e_crc

    @classmethod
    def decode(cls, data: bytes, *, crc: bool | None = None) -> Self:
        """``crc`` is CGM Feature b12 when known; ``None`` infers it from the length."""
        reader = Reader(data, cls.CHARACTERISTIC)
        hours = reader.u16("CGM Session Run Time")
        e2e_crc, received = _finish(reader, 0, crc, "CGM Session Run Time")
        return cls(hours=hours, e2e_crc=e2e_crc, crc=received)

    def encode(self) -> bytes:
        writer = Writer()
        writer.u16(self.hours, "CGM Session Run Time")
        _write_crc(writer, self.e2e_crc, self.crc)
        return writer.to_bytes()


# --- CGM Specific Ops Control Point (0x2AAC) ---------------------------------------------------


class SocpOpCode(IntEnum):
    """SOCP op codes (spec §7.6); anything else is refused, never guessed."""

    SET_COMMUNICATION_INTERVAL = 0x01
    GET_COMMUNICATION_INTERVAL = 0x02
    COMMUNICATION_INTERVAL_RESPONSE = 0x03
    SET_GLUCOSE_CALIBRATION_VALUE = 0x04
    GET_GLUCOSE_CALIBRATION_VALUE = 0x05
    GLUCOSE_CALIBRATION_VALUE_RESPONSE = 0x06
    SET_PATIENT_HIGH_ALERT_LEVEL = 0x07
    GET_PATIENT_HIGH_ALERT_LEVEL = 0x08
    PATIENT_HIGH_ALERT_LEVEL_RESPONSE = 0x09
    SET_PATIENT_LOW_ALERT_LEVEL = 0x0A
    GET_PATIENT_LOW_ALERT_LEVEL = 0x0B
    PATIENT_LOW_ALERT_LEVEL_RESPONSE = 0x0C
    SET_HYPO_ALERT_LEVEL = 0x0D
    GET_HYPO_ALERT_LEVEL = 0x0E
    HYPO_ALERT_LEVEL_RESPONSE = 0x0F
    SET_HYPER_ALERT_LEVEL = 0x10
    GET_HYPER_ALERT_LEVEL = 0x11
    HYPER_ALERT_LEVEL_RESPONSE = 0x12
    SET_RATE_OF_DECREASE_ALERT_LEVEL = 0x13
    GET_RATE_OF_DECREASE_ALERT_LEVEL = 0x14
    RATE_OF_DECREASE_ALERT_LEVEL_RESPONSE = 0x15
    SET_RATE_OF_INCREASE_ALERT_LEVEL = 0x16
    GET_RATE_OF_INCREASE_ALERT_LEVEL = 0x17
    RATE_OF_INCREASE_ALERT_LEVEL_RESPONSE = 0x18
    RESET_DEVICE_SPECIFIC_ALERT = 0x19
    START_SESSION = 0x1A
    STOP_SESSION = 0x1B
    RESPONSE_CODE = 0x1C


class SocpResponseCode(IntEnum):
    """Response values of op code 0x1C."""

    SUCCESS = 0x01
    OP_CODE_NOT_SUPPORTED = 0x02
    INVALID_OPERAND = 0x03
    PROCEDURE_NOT_COMPLETED = 0x04
    PARAMETER_OUT_OF_RANGE = 0x05


_CAL_REJECTED = 0x01
_CAL_OUT_OF_RANGE = 0x02
_CAL_PROCESS_PENDING = 0x04
_CAL_RFU = 0xF8


@dataclass(frozen=True, slots=True, kw_only=True)
class CgmCalibrationStatus:
    """The calibration record's status octet, bit by bit."""

    rejected: bool = False
    out_of_range: bool = False
    process_pending: bool = False
    rfu: int = 0  # bits 3-7, in place, as received

    @classmethod
    def from_raw(cls, raw: int) -> Self:
        """Split a status octet; every pattern is accepted."""
        if not 0 <= raw <= 0xFF:
            raise ValueError("Calibration Status is an 8-bit field")
        return cls(
            rejected=bool(raw & _CAL_REJECTED),
            out_of_range=bool(raw & _CAL_OUT_OF_RANGE),
            process_pending=bool(raw & _CAL_PROCESS_PENDING),
            rfu=raw & _CAL_RFU,
        )

    @property
    def raw(self) -> int:
        """The status octet; ValueError when ``rfu`` strays outside bits 3-7."""
        if self.rfu & ~_CAL_RFU:
            raise ValueError("Calibration Status rfu may only hold bits 3-7 (mask 0xF8)")
        raw = self.rfu
        if self.rejected:
            raw |= _CAL_REJECTED
        if self.out_of_range:
            raw |= _CAL_OUT_OF_RANGE
        if self.process_pending:
            raw |= _CAL_PROCESS_PENDING
        return raw


@dataclass(frozen=True, slots=True, kw_only=True)
class CgmCalibrationRecord:
    """The 10-octet SOCP calibration operand (set calibration value, calibration response)."""

    SIZE: ClassVar[int] = 10

    concentration: MedFloat  # mg/dL
    calibration_time: int  # minutes after the session start
    sample_type: int  # Type nibble (CgmType codes)
    sample_location: int  # Sample Location nibble (CgmSampleLocation codes)
    next_calibration_time: int  # minutes
    record_number: int
    status: CgmCalibrationStatus = CgmCalibrationStatus()

    @classmethod
    def read(cls, reader: Reader) -> Self:
        concentration = read_sfloat(reader, "Calibration Glucose Concentration")
        calibration_time = reader.u16("Calibration Time")
        sample_type, sample_location = _nibbles(reader.u8("Calibration Type-Sample Location"))
        next_calibration_time = reader.u16("Next Calibration Time")
        record_number = reader.u16("Calibration Data Record Number")
        status = CgmCalibrationStatus.from_raw(reader.u8("Calibration Status"))
        return cls(
            concentration=concentration,
            calibration_time=calibration_time,
            sample_type=sample_type,
            sample_location=sample_location,
            next_calibration_time=next_calibration_time,
            record_number=record_number,
            status=status,
        )

    def write(self, writer: Writer) -> None:
        """Append the 10 octets; ValueError for fields the wire format cannot carry."""
        write_sfloat(writer, self.concentration)
        writer.u16(self.calibration_time, "Calibration Time")
        nibbles = _pack_nibbles(self.sample_type, self.sample_location, "Type-Sample Location")
        writer.u8(nibbles)
        writer.u16(self.next_calibration_time, "Next Calibration Time")
        writer.u16(self.record_number, "Calibration Data Record Number")
        writer.u8(self.status.raw, "Calibration Status")

    @property
    def concentration_value(self) -> Decimal | None:
        """Exact calibration concentration in mg/dL; None for an SFLOAT special."""
        return self.concentration.value

    @property
    def glucose_type(self) -> CgmType | None:
        """The sample type; None for a reserved code."""
        return _type(self.sample_type)

    @property
    def glucose_type_text(self) -> str:
        """Spec wording ("capillary plasma") or "reserved"."""
        return _type_text(self.sample_type)

    @property
    def site(self) -> CgmSampleLocation | None:
        """The sample location; None for a reserved code."""
        return _location(self.sample_location)

    @property
    def sample_location_text(self) -> str:
        return _location_text(self.sample_location)

    @property
    def control_solution(self) -> bool:
        """Taken with control solution: not a patient value (spec §6.1)."""
        return _control_solution(self.sample_type, self.sample_location)


class _Operand(Enum):
    """What follows an op code, by op code (spec §7.6 table)."""

    NONE = "none"
    INTERVAL = "interval"  # uint8 minutes
    CALIBRATION = "calibration"  # 10-octet calibration record
    RECORD_NUMBER = "record number"  # uint16
    LEVEL = "level"  # SFLOAT
    RESPONSE = "response"  # request op code uint8, response value uint8


# The six alert levels come in (set, get, response) triples from 0x07 to 0x18.
_SET_LEVEL = range(0x07, 0x19, 3)
_GET_LEVEL = range(0x08, 0x19, 3)
_LEVEL_RESPONSE = range(0x09, 0x19, 3)
_REQUEST_OPERANDS: dict[int, _Operand] = {
    SocpOpCode.SET_COMMUNICATION_INTERVAL: _Operand.INTERVAL,
    SocpOpCode.GET_COMMUNICATION_INTERVAL: _Operand.NONE,
    SocpOpCode.SET_GLUCOSE_CALIBRATION_VALUE: _Operand.CALIBRATION,
    SocpOpCode.GET_GLUCOSE_CALIBRATION_VALUE: _Operand.RECORD_NUMBER,
    **dict.fromkeys(_SET_LEVEL, _Operand.LEVEL),
    **dict.fromkeys(_GET_LEVEL, _Operand.NONE),
    SocpOpCode.RESET_DEVICE_SPECIFIC_ALERT: _Operand.NONE,
    SocpOpCode.START_SESSION: _Operand.NONE,
    SocpOpCode.STOP_SESSION: _Operand.NONE,
}
_RESPONSE_OPERANDS: dict[int, _Operand] = {
    SocpOpCode.COMMUNICATION_INTERVAL_RESPONSE: _Operand.INTERVAL,
    SocpOpCode.GLUCOSE_CALIBRATION_VALUE_RESPONSE: _Operand.CALIBRATION,
    **dict.fromkeys(_LEVEL_RESPONSE, _Operand.LEVEL),
    SocpOpCode.RESPONSE_CODE: _Operand.RESPONSE,
}
# Rate-of-decrease and rate-of-increase levels are (mg/dL)/min, the others mg/dL.
_RATE_LEVELS = frozenset(range(SocpOpCode.SET_RATE_OF_DECREASE_ALERT_LEVEL, 0x19))
_CHAR_SOCP = "2AAC"
_SOCP_NAME = "CGM Specific Ops Control Point"


@dataclass(frozen=True, slots=True)
class _Operands:
    """Every operand field either side can carry; the op code says which one is set."""

    interval: int | None = None
    calibration: CgmCalibrationRecord | None = None
    record_number: int | None = None
    level: MedFloat | None = None
    request_op_code: int | None = None
    response_value: int | None = None


_OPERAND_FIELD = {
    _Operand.INTERVAL: "interval",
    _Operand.CALIBRATION: "calibration",
    _Operand.RECORD_NUMBER: "record_number",
    _Operand.LEVEL: "level",
}


def _read_socp(
    data: bytes, operands: dict[int, _Operand], other: dict[int, _Operand], crc: bool | None
) -> tuple[SocpOpCode, _Operands, bool, int | None]:
    reader = Reader(data, _CHAR_SOCP)
    raw = reader.u8("Op Code")
    kind = operands.get(raw)
    if kind is None:
        reason = "op code of the other direction" if raw in other else "unknown op code"
        raise reader.error("Op Code", reason, 0)
    match kind:
        case _Operand.NONE:
            values = _Operands()
        case _Operand.INTERVAL:
            values = _Operands(interval=reader.u8("Communication Interval"))
        case _Operand.CALIBRATION:
            values = _Operands(calibration=CgmCalibrationRecord.read(reader))
        case _Operand.RECORD_NUMBER:
            values = _Operands(record_number=reader.u16("Calibration Data Record Number"))
        case _Operand.LEVEL:
            values = _Operands(level=read_sfloat(reader, "Alert Level"))
        case _Operand.RESPONSE:
            request = reader.u8("Request Op Code")
            values = _Operands(request_op_code=request, response_value=reader.u8("Response Code"))
    e2e_crc, received = _finish(reader, 0, crc, _SOCP_NAME)
    return SocpOpCode(raw), values, e2e_crc, received


def _write_socp(
    op_code: SocpOpCode,
    operands: dict[int, _Operand],
    values: _Operands,
    e2e_crc: bool,
    crc: int | None,
) -> bytes:
    kind = operands.get(op_code)
    if kind is None:
        raise ValueError("op code not valid in this direction")
    expected = {"request_op_code", "response_value"} if kind is _Operand.RESPONSE else set()
    if kind in _OPERAND_FIELD:
        expected = {_OPERAND_FIELD[kind]}
    present = {f.name for f in fields(values) if getattr(values, f.name) is not None}
    if present != expected:
        raise ValueError("operand fields do not match the op code")
    writer = Writer()
    writer.u8(op_code, "Op Code")
    if values.interval is not None:
        writer.u8(values.interval, "Communication Interval")
    if values.calibration is not None:
        values.calibration.write(writer)
    if values.record_number is not None:
        writer.u16(values.record_number, "Calibration Data Record Number")
    if values.level is not None:
        write_sfloat(writer, values.level)
    if values.request_op_code is not None and values.response_value is not None:
        writer.u8(values.request_op_code, "Request Op Code")
        writer.u8(values.response_value, "Response Code")
    _write_crc(writer, e2e_crc, crc)
    return writer.to_bytes()


def _level_unit(op_code: int) -> Literal["mg/dL", "mg/dL/min"]:
    return RATE_UNIT if op_code in _RATE_LEVELS else GLUCOSE_UNIT


@dataclass(frozen=True, slots=True, kw_only=True)
class SocpRequest:
    """A SOCP write (collector -> sensor): decoded by the emulated sensor, encoded by drivers.

    Exactly the operand field the op code calls for is set: ``interval`` (set communication
    interval, minutes), ``calibration`` (set calibration value), ``record_number`` (get
    calibration value, 0xFFFF = last) or ``level`` (set alert levels).
    """

    CHARACTERISTIC: ClassVar[str] = _CHAR_SOCP

    op_code: SocpOpCode
    interval: int | None = None
    calibration: CgmCalibrationRecord | None = None
    record_number: int | None = None
    level: MedFloat | None = None
    e2e_crc: bool = False
    crc: int | None = None  # as received; None: computed on encode when e2e_crc

    @classmethod
    def decode(cls, data: bytes, *, crc: bool | None = None) -> Self:
        """Response op codes and unknown ones are refused (field "Op Code", offset 0)."""
        op_code, v, e2e_crc, received = _read_socp(data, _REQUEST_OPERANDS, _RESPONSE_OPERANDS, crc)
        return cls(
            op_code=op_code,
            interval=v.interval,
            calibration=v.calibration,
            record_number=v.record_number,
            level=v.level,
            e2e_crc=e2e_crc,
            crc=received,
        )

    def encode(self) -> bytes:
        """ValueError for a response op code or operand fields the op code does not carry."""
        values = _Operands(
            interval=self.interval,
            calibration=self.calibration,
            record_number=self.record_number,
            level=self.level,
        )
        return _write_socp(self.op_code, _REQUEST_OPERANDS, values, self.e2e_crc, self.crc)

    @property
    def level_unit(self) -> Literal["mg/dL", "mg/dL/min"] | None:
        """UCUM unit of ``level``; None when the op code carries none."""
        return None if self.level is None else _level_unit(self.op_code)


@dataclass(frozen=True, slots=True, kw_only=True)
class SocpResponse:
    """A SOCP indication (sensor -> collector): decoded by drivers, encoded by the emulator.

    ``request_op_code`` is kept raw: a sensor answers "op code not supported" by echoing
    whatever it was sent.
    """

    CHARACTERISTIC: ClassVar[str] = _CHAR_SOCP

    op_code: SocpOpCode
    interval: int | None = None
    calibration: CgmCalibrationRecord | None = None
    level: MedFloat | None = None
    request_op_code: int | None = None
    response_value: int | None = None
    e2e_crc: bool = False
    crc: int | None = None  # as received; None: computed on encode when e2e_crc

    @classmethod
    def decode(cls, data: bytes, *, crc: bool | None = None) -> Self:
        """Request op codes and unknown ones are refused (field "Op Code", offset 0)."""
        op_code, v, e2e_crc, received = _read_socp(data, _RESPONSE_OPERANDS, _REQUEST_OPERANDS, crc)
        return cls(
            op_code=op_code,
            interval=v.interval,
            calibration=v.calibration,
            level=v.level,
            request_op_code=v.request_op_code,
            response_value=v.response_value,
            e2e_crc=e2e_crc,
            crc=received,
        )

    def encode(self) -> bytes:
        """ValueError for a request op code or operand fields the op code does not carry."""
        values = _Operands(
            interval=self.interval,
            calibration=self.calibration,
            level=self.level,
            request_op_code=self.request_op_code,
            response_value=self.response_value,
        )
        return _write_socp(self.op_code, _RESPONSE_OPERANDS, values, self.e2e_crc, self.crc)

    @property
    def request(self) -> SocpOpCode | None:
        """The op code being answered; None when absent or not a known op code."""
        code = self.request_op_code
        return SocpOpCode(code) if code is not None and code in _KNOWN_OP_CODES else None

    @property
    def response(self) -> SocpResponseCode | None:
        """The response value; None when absent or a reserved code."""
        code = self.response_value
        return SocpResponseCode(code) if code is not None and code in _RESPONSE_CODES else None

    @property
    def success(self) -> bool:
        return self.response is SocpResponseCode.SUCCESS

    @property
    def level_unit(self) -> Literal["mg/dL", "mg/dL/min"] | None:
        """UCUM unit of ``level``; None when the op code carries none."""
        return None if self.level is None else _level_unit(self.op_code)


_KNOWN_OP_CODES = frozenset(op.value for op in SocpOpCode)
_RESPONSE_CODES = frozenset(code.value for code in SocpResponseCode)
