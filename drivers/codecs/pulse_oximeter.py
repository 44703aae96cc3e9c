"""Pulse Oximeter Service values: PLX Spot-check Measurement (0x2A5E), PLX Continuous Measurement
(0x2A5F) and PLX Features (0x2A60).

SpO2, pulse rate and pulse amplitude index are SFLOATs kept as ``MedFloat``: sensors send NaN
while they search for a pulse (spec §9), and ``1000e-1`` must stay distinct from ``100`` in
provenance even though the values are equal (spec §1.2). The two measurements put their flag
bits in different positions (spec §9.1, §9.2), so they are separate classes with separate flag
tables. Whether a value should be used is answered by ``is_unusable`` and
``is_demonstration_or_testing`` (spec §9 gateway rule); the codec only reports, the driver acts.
The status classes are prefixed ``Plx`` because Blood Pressure already exports a
``MeasurementStatus`` with a different bit map.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar, Literal, Self

from . import _bits
from ._cursor import Reader, Writer
from .date_time import DateTime
from .ieee11073 import MedFloat, read_sfloat, write_sfloat

_MEASUREMENT_STATUS_BITS = (
    # bits 0-4 are RFU
    "measurement_ongoing",
    "early_estimated_data",
    "validated_data",
    "fully_qualified_data",
    "data_from_measurement_storage",
    "data_for_demonstration",
    "data_for_testing",
    "calibration_ongoing",
    "measurement_unavailable",
    "questionable_measurement",
    "invalid_measurement",
)
_MEASUREMENT_STATUS_FIRST_BIT = 5
_MEASUREMENT_STATUS_RFU = 0x001F  # bits 0-4


@dataclass(frozen=True, slots=True, kw_only=True)
class PlxMeasurementStatus:
    """Measurement Status (uint16, spec §9), bit by bit; also the PLX Features support mask."""

    measurement_ongoing: bool = False
    early_estimated_data: bool = False
    validated_data: bool = False
    fully_qualified_data: bool = False
    data_from_measurement_storage: bool = False
    data_for_demonstration: bool = False
    data_for_testing: bool = False
    calibration_ongoing: bool = False
    measurement_unavailable: bool = False
    questionable_measurement: bool = False
    invalid_measurement: bool = False
    rfu: int = 0  # bits 0-4, in place, as received

    @classmethod
    def from_raw(cls, raw: int) -> Self:
        """Split a 16-bit status word; every pattern is accepted."""
        bits = _bits.split(
            raw,
            _MEASUREMENT_STATUS_BITS,
            width=16,
            what="Measurement Status",
            first=_MEASUREMENT_STATUS_FIRST_BIT,
        )
        return cls(rfu=raw & _MEASUREMENT_STATUS_RFU, **bits)

    @property
    def raw(self) -> int:
        """The 16-bit word; ValueError when ``rfu`` strays outside bits 0-4."""
        return _bits.join(
            self,
            _MEASUREMENT_STATUS_BITS,
            rfu=self.rfu,
            rfu_mask=_MEASUREMENT_STATUS_RFU,
            what="Measurement Status",
            first=_MEASUREMENT_STATUS_FIRST_BIT,
        )


_DEVICE_STATUS_BITS = (
    "extended_display_update_ongoing",
    "equipment_malfunction",
    "signal_processing_irregularity",
    "inadequate_signal",
    "poor_signal",
    "low_perfusion",
    "erratic_signal",
    "nonpulsatile_signal",
    "questionable_pulse",
    "signal_analysis_ongoing",
    "sensor_interference",
    "sensor_unconnected_to_user",
    "unknown_sensor_connected",
    "sensor_displaced",
    "sensor_malfunctioning",
    "sensor_disconnected",
)
_DEVICE_STATUS_RFU = 0xFF0000  # bits 16-23
_DEVICE_STATUS_NAME = "Device and Sensor Status"


@dataclass(frozen=True, slots=True, kw_only=True)
class PlxDeviceSensorStatus:
    """Device and Sensor Status (uint24, spec §9), bit by bit; also its Features support mask."""

    extended_display_update_ongoing: bool = False
    equipment_malfunction: bool = False
    signal_processing_irregularity: bool = False
    inadequate_signal: bool = False
    poor_signal: bool = False
    low_perfusion: bool = False
    erratic_signal: bool = False
    nonpulsatile_signal: bool = False
    questionable_pulse: bool = False
    signal_analysis_ongoing: bool = False
    sensor_interference: bool = False
    sensor_unconnected_to_user: bool = False
    unknown_sensor_connected: bool = False
    sensor_displaced: bool = False
    sensor_malfunctioning: bool = False
    sensor_disconnected: bool = False
    rfu: int = 0  # bits 16-23, in place, as received

    @classmethod
    def from_raw(cls, raw: int) -> Self:
        """Split a 24-bit status word; every pattern is accepted."""
        bits = _bits.split(raw, _DEVICE_STATUS_BITS, width=24, what=_DEVICE_STATUS_NAME)
        return cls(rfu=raw & _DEVICE_STATUS_RFU, **bits)

    @property
    def raw(self) -> int:
        """The 24-bit word; ValueError when ``rfu`` strays outside bits 16-23."""
        return _bits.join(
            self,
            _DEVICE_STATUS_BITS,
            rfu=self.rfu,
            rfu_mask=_DEVICE_STATUS_RFU,
            what=_DEVICE_STATUS_NAME,
        )


def _read_measurement_status(reader: Reader) -> PlxMeasurementStatus:
    return PlxMeasurementStatus.from_raw(reader.u16("Measurement Status"))


def _read_device_status(reader: Reader) -> PlxDeviceSensorStatus:
    return PlxDeviceSensorStatus.from_raw(reader.u24("Device and Sensor Status"))


class _PlxValues:
    """What a spot-check and a continuous sample share: exact values, units and the verdicts
    their status fields give (written once for both measurement classes)."""

    __slots__ = ()
    spo2: MedFloat
    pulse_rate: MedFloat
    pulse_amplitude_index: MedFloat | None
    measurement_status: PlxMeasurementStatus | None
    device_sensor_status: PlxDeviceSensorStatus | None

    @property
    def spo2_value(self) -> Decimal | None:
        """Exact SpO2 in %; None for an SFLOAT special (NaN while searching)."""
        return self.spo2.value

    @property
    def pulse_rate_value(self) -> Decimal | None:
        """Exact pulse rate in beats per minute; None for an SFLOAT special."""
        return self.pulse_rate.value

    @property
    def pulse_amplitude_index_value(self) -> Decimal | None:
        """Exact pulse amplitude index in %; None when absent or special."""
        index = self.pulse_amplitude_index
        return None if index is None else index.value

    @property
    def percent_unit(self) -> Literal["%"]:
        """UCUM unit of the SpO2 values and ``pulse_amplitude_index_value``."""
        return "%"

    @property
    def pulse_rate_unit(self) -> Literal["/min"]:
        """UCUM unit of the pulse rates."""
        return "/min"

    @property
    def is_demonstration_or_testing(self) -> bool:
        """Measurement Status says demonstration or testing data: never a patient's reading."""
        status = self.measurement_status
        return status is not None and (status.data_for_demonstration or status.data_for_testing)

    @property
    def is_unusable(self) -> bool:
        """Measurement unavailable or invalid, or the sensor displaced or disconnected."""
        status, device = self.measurement_status, self.device_sensor_status
        if status is not None and (status.measurement_unavailable or status.invalid_measurement):
            return True
        return device is not None and (device.sensor_displaced or device.sensor_disconnected)


_SPOT_TIMESTAMP = 1 << 0
_SPOT_STATUS = 1 << 1
_SPOT_DEVICE_STATUS = 1 << 2
_SPOT_PAI = 1 << 3
_SPOT_CLOCK_NOT_SET = 1 << 4
_FLAGS_RFU = 0xE0  # bits 5-7, both measurements


@dataclass(frozen=True, slots=True, kw_only=True)
class PlxSpotCheck(_PlxValues):
    """One PLX Spot-check Measurement indication (0x2A5E), raw fields as sent: a final record.

    ``device_clock_not_set`` (flag b4) says the Time Stamp is not wall-clock time.
    """

    CHARACTERISTIC: ClassVar[str] = "2A5E"

    spo2: MedFloat  # %
    pulse_rate: MedFloat  # beats per minute
    timestamp: DateTime | None = None
    measurement_status: PlxMeasurementStatus | None = None
    device_sensor_status: PlxDeviceSensorStatus | None = None
    pulse_amplitude_index: MedFloat | None = None  # %
    device_clock_not_set: bool = False
    rfu_flags: int = 0  # flag bits 5-7, in place, as received
    trailing: bytes = b""  # extra bytes after the last flagged field (tolerated, spec §1.1)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        flags = reader.u8("Flags")
        spo2 = read_sfloat(reader, "SpO2")
        pulse_rate = read_sfloat(reader, "PR")
        timestamp = DateTime.read(reader, "Timestamp") if flags & _SPOT_TIMESTAMP else None
        status = _read_measurement_status(reader) if flags & _SPOT_STATUS else None
        device = _read_device_status(reader) if flags & _SPOT_DEVICE_STATUS else None
        pai = read_sfloat(reader, "Pulse Amplitude Index") if flags & _SPOT_PAI else None
        return cls(
            spo2=spo2,
            pulse_rate=pulse_rate,
            timestamp=timestamp,
            measurement_status=status,
            device_sensor_status=device,
            pulse_amplitude_index=pai,
            device_clock_not_set=bool(flags & _SPOT_CLOCK_NOT_SET),
            rfu_flags=flags & _FLAGS_RFU,
            trailing=reader.rest(),
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError for fields the wire format cannot carry."""
        if self.rfu_flags & ~_FLAGS_RFU:
            raise ValueError("rfu_flags may only hold flag bits 5-7 (mask 0xE0)")
        writer = Writer()
        writer.u8(self.flags, "Flags")
        write_sfloat(writer, self.spo2)
        write_sfloat(writer, self.pulse_rate)
        if self.timestamp is not None:
            self.timestamp.write(writer)
        if self.measurement_status is not None:
            writer.u16(self.measurement_status.raw, "Measurement Status")
        if self.device_sensor_status is not None:
            writer.u24(self.device_sensor_status.raw, "Device and Sensor Status")
        if self.pulse_amplitude_index is not None:
            write_sfloat(writer, self.pulse_amplitude_index)
        writer.extend(self.trailing)
        return writer.to_bytes()

    @property
    def flags(self) -> int:
        """The flags byte implied by the fields (equals the received one after decode)."""
        flags = self.rfu_flags
        if self.timestamp is not None:
            flags |= _SPOT_TIMESTAMP
        if self.measurement_status is not None:
            flags |= _SPOT_STATUS
        if self.device_sensor_status is not None:
            flags |= _SPOT_DEVICE_STATUS
        if self.pulse_amplitude_index is not None:
            flags |= _SPOT_PAI
        if self.device_clock_not_set:
            flags |= _SPOT_CLOCK_NOT_SET
        return flags


@dataclass(frozen=True, slots=True)
class SpO2PulseRate:
    """One SpO2PR pair of the continuous measurement (two SFLOATs, spec §9.2)."""

    spo2: MedFloat  # %
    pulse_rate: MedFloat  # beats per minute

    @property
    def spo2_value(self) -> Decimal | None:
        """Exact SpO2 in %; None for an SFLOAT special."""
        return self.spo2.value

    @property
    def pulse_rate_value(self) -> Decimal | None:
        """Exact pulse rate in beats per minute; None for an SFLOAT special."""
        return self.pulse_rate.value


def _read_pair(reader: Reader, name: str) -> SpO2PulseRate:
    spo2 = read_sfloat(reader, f"{name}.SpO2")
    return SpO2PulseRate(spo2, read_sfloat(reader, f"{name}.PR"))


def _write_pair(writer: Writer, pair: SpO2PulseRate) -> None:
    write_sfloat(writer, pair.spo2)
    write_sfloat(writer, pair.pulse_rate)


_CONT_FAST = 1 << 0
_CONT_SLOW = 1 << 1
_CONT_STATUS = 1 << 2
_CONT_DEVICE_STATUS = 1 << 3
_CONT_PAI = 1 << 4


@dataclass(frozen=True, slots=True, kw_only=True)
class PlxContinuous(_PlxValues):
    """One PLX Continuous Measurement notification (0x2A5F): a stream sample, raw fields as sent.

    ``spo2``/``pulse_rate`` are the mandatory SpO2PR-Normal pair; ``fast`` and ``slow`` are the
    optional differently-averaged pairs.
    """

    CHARACTERISTIC: ClassVar[str] = "2A5F"

    spo2: MedFloat  # SpO2PR-Normal, %
    pulse_rate: MedFloat  # SpO2PR-Normal, beats per minute
    fast: SpO2PulseRate | None = None
    slow: SpO2PulseRate | None = None
    measurement_status: PlxMeasurementStatus | None = None
    device_sensor_status: PlxDeviceSensorStatus | None = None
    pulse_amplitude_index: MedFloat | None = None  # %
    rfu_flags: int = 0  # flag bits 5-7, in place, as received
    trailing: bytes = b""  # extra bytes after the last flagged field (tolerated, spec §1.1)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        flags = reader.u8("Flags")
        normal = _read_pair(reader, "SpO2PR-Normal")
        fast = _read_pair(reader, "SpO2PR-Fast") if flags & _CONT_FAST else None
        slow = _read_pair(reader, "SpO2PR-Slow") if flags & _CONT_SLOW else None
        status = _read_measurement_status(reader) if flags & _CONT_STATUS else None
        device = _read_device_status(reader) if flags & _CONT_DEVICE_STATUS else None
        pai = read_sfloat(reader, "Pulse Amplitude Index") if flags & _CONT_PAI else None
        return cls(
            spo2=normal.spo2,
            pulse_rate=normal.pulse_rate,
            fast=fast,
            slow=slow,
            measurement_status=status,
            device_sensor_status=device,
            pulse_amplitude_index=pai,
            rfu_flags=flags & _FLAGS_RFU,
            trailing=reader.rest(),
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError for fields the wire format cannot carry."""
        if self.rfu_flags & ~_FLAGS_RFU:
            raise ValueError("rfu_flags may only hold flag bits 5-7 (mask 0xE0)")
        writer = Writer()
        writer.u8(self.flags, "Flags")
        _write_pair(writer, SpO2PulseRate(self.spo2, self.pulse_rate))
        if self.fast is not None:
            _write_pair(writer, self.fast)
        if self.slow is not None:
            _write_pair(writer, self.slow)
        if self.measurement_status is not None:
            writer.u16(self.measurement_status.raw, "Measurement Status")
        if self.device_sensor_status is not None:
            writer.u24(self.device_sensor_status.raw, "Device and Sensor Status")
        if self.pulse_amplitude_index is not None:
            write_sfloat(writer, self.pulse_amplitude_index)
        writer.extend(self.trailing)
        return writer.to_bytes()

    @property
    def flags(self) -> int:
        """The flags byte implied by the fields (equals the received one after decode)."""
        flags = self.rfu_flags
        if self.fast is not None:
            flags |= _CONT_FAST
        if self.slow is not None:
            flags |= _CONT_SLOW
        if self.measurement_status is not None:
            flags |= _CONT_STATUS
        if self.device_sensor_status is not None:
            flags |= _CONT_DEVICE_STATUS
        if self.pulse_amplitude_index is not None:
            flags |= _CONT_PAI
        return flags


_FEATURE_BITS = (
    "measurement_status_support_present",  # implied by ``measurement_status_support``
    "device_sensor_status_support_present",  # implied by ``device_sensor_status_support``
    "spot_check_measurement_storage",
    "spot_check_timestamp",
    "spo2pr_fast",
    "spo2pr_slow",
    "pulse_amplitude_index",
    "multiple_bonds",
)
_FEATURE_MS_SUPPORT = 1 << 0
_FEATURE_DS_SUPPORT = 1 << 1
_FEATURE_RFU = 0xFF00  # bits 8-15


@dataclass(frozen=True, slots=True, kw_only=True)
class PlxFeatures:
    """PLX Features (0x2A60): what the oximeter supports, read once per connection.

    Bits 0 and 1 of Supported Features only announce the two optional support masks that
    follow, so they are not stored twice: they are set exactly when the mask is present.
    The masks use the status bit maps (a set bit = that status bit is supported).
    """

    CHARACTERISTIC: ClassVar[str] = "2A60"

    spot_check_measurement_storage: bool = False
    spot_check_timestamp: bool = False
    spo2pr_fast: bool = False
    spo2pr_slow: bool = False
    pulse_amplitude_index: bool = False
    multiple_bonds: bool = False
    rfu: int = 0  # Supported Features bits 8-15, in place, as received
    measurement_status_support: PlxMeasurementStatus | None = None
    device_sensor_status_support: PlxDeviceSensorStatus | None = None
    trailing: bytes = b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        bits = reader.u16("Supported Features")
        status_support = device_support = None
        if bits & _FEATURE_MS_SUPPORT:
            raw = reader.u16("Measurement Status Support")
            status_support = PlxMeasurementStatus.from_raw(raw)
        if bits & _FEATURE_DS_SUPPORT:
            raw = reader.u24("Device and Sensor Status Support")
            device_support = PlxDeviceSensorStatus.from_raw(raw)
        return cls(
            spot_check_measurement_storage=bool(bits & 1 << 2),
            spot_check_timestamp=bool(bits & 1 << 3),
            spo2pr_fast=bool(bits & 1 << 4),
            spo2pr_slow=bool(bits & 1 << 5),
            pulse_amplitude_index=bool(bits & 1 << 6),
            multiple_bonds=bool(bits & 1 << 7),
            rfu=bits & _FEATURE_RFU,
            measurement_status_support=status_support,
            device_sensor_status_support=device_support,
            trailing=reader.rest(),
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError when ``rfu`` strays outside bits 8-15."""
        writer = Writer()
        writer.u16(self.supported_features, "Supported Features")
        if self.measurement_status_support is not None:
            writer.u16(self.measurement_status_support.raw, "Measurement Status Support")
        if self.device_sensor_status_support is not None:
            raw = self.device_sensor_status_support.raw
            writer.u24(raw, "Device and Sensor Status Support")
        writer.extend(self.trailing)
        return writer.to_bytes()

    @property
    def measurement_status_support_present(self) -> bool:
        """Supported Features b0."""
        return self.measurement_status_support is not None

    @property
    def device_sensor_status_support_present(self) -> bool:
        """Supported Features b1."""
        return self.device_sensor_status_support is not None

    @property
    def supported_features(self) -> int:
        """The 16-bit Supported Features word (equals the received one after decode)."""
        if self.rfu & ~_FEATURE_RFU:
            raise ValueError("rfu may only hold bits 8-15 (mask 0xFF00)")
        bits = self.rfu
        for i, name in enumerate(_FEATURE_BITS):
            if getattr(self, name):
                bits |= 1 << i
        return bits
