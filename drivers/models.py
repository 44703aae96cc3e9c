"""Values that cross layer boundaries: what a driver hands to binding, mapping and the outbox.

All frozen, all exact: numbers stay ``Decimal`` with the precision the device sent, special values
are explicit markers, and both clocks (device as reported, gateway at receipt) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum


class Absent(StrEnum):
    """Why a quantity has no value (IEEE-11073 special values, plus WSS/BCS 'unsuccessful')."""

    NAN = "nan"
    NRES = "nres"
    POSITIVE_INFINITY = "+inf"
    NEGATIVE_INFINITY = "-inf"
    RESERVED = "reserved"
    UNSUCCESSFUL = "unsuccessful"


class TimeSource(StrEnum):
    """Where ``Reading.effective_time`` came from, so nothing about time is guessed silently."""

    DEVICE_LOCAL = "device-local"  # device wall clock, offset taken from the gateway's zone
    DEVICE_UTC = "device-utc"  # device wall clock known (by firmware profile) to be UTC
    GATEWAY_RECEIPT = "gateway-receipt"  # device sent no usable time: gateway receipt time


def normalize_device(text: str) -> str:
    """An EUI-64 or Bluetooth address as configured (any separator, any case) in one form, so a
    binding, a consent code and a device identity compare equal."""
    return text.replace(":", "").replace("-", "").upper()


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceIdentity:
    """Who sent a reading, as read from the advertisement and Device Information."""

    address: str  # link address, "AA:BB:CC:DD:EE:FF"
    system_id: str | None = None  # EUI-64 as 16 upper-case hex digits, no separators
    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None
    hardware: str | None = None
    software: str | None = None
    profile_id: str | None = None  # firmware profile applied, if any

    @property
    def key(self) -> str:
        """PHD device part of identifiers: EUI-64 (16 hex) or, lacking one, EUI-48 (12 hex)."""
        if self.system_id:
            return self.system_id.upper()
        return self.address.replace(":", "").replace("-", "").upper()


@dataclass(frozen=True, slots=True, kw_only=True)
class Quantity:
    """One measured quantity, exactly as decoded.

    ``name`` is one of the names in ``mappers.codes`` (e.g. ``body-weight``); ``unit`` is UCUM as
    the device reported it (``kg``, ``[lb_av]``, ``m``, ``[in_i]``, ``kg/m2``). Exactly one of
    ``value`` and ``absent`` is set.
    """

    name: str
    value: Decimal | None
    unit: str
    absent: Absent | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientRef:
    """A patient identifier (system + value); never logged above DEBUG."""

    system: str
    value: str

    @classmethod
    def parse(cls, text: str) -> PatientRef:
        """Parse ``SYSTEM|VALUE`` as written on the command line and in config."""
        system, sep, value = text.rpartition("|")
        if not sep or not system or not value:
            raise ValueError("patient must be written SYSTEM|VALUE")
        return cls(system=system, value=value)

    def __str__(self) -> str:
        return f"{self.system}|{self.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayInfo:
    """The gateway (PHD 'PHG') that received the reading."""

    system_id: str  # EUI-64, 16 upper-case hex digits
    software_version: str
    time_sync: str = "sntpv4"  # how the gateway clock is disciplined (see mappers.codes)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockCheck:
    """The device clock as read (Current Time Service) against the gateway clock, once a session.

    Mapped to the PHD coincident time-stamp Observation: it is what lets a record server trust (or
    re-anchor) device times. ``set_to`` is the gateway time written to the device afterwards, when
    the firmware profile allows the gateway to correct the clock.
    """

    device_time: datetime | None  # naive wall clock as read; None when the device has a time fault
    gateway_time: datetime  # aware UTC, gateway clock when the device clock was read
    set_to: datetime | None = None  # naive wall clock written to the device, if it was corrected


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """One measurement event from one device (one indication), possibly several quantities."""

    kind: str  # measurement family, e.g. "weight"
    characteristic: str  # 16-bit UUID as 4 upper-case hex digits, e.g. "2A9D"
    device: DeviceIdentity
    quantities: tuple[Quantity, ...]
    device_time: datetime | None  # naive wall clock exactly as reported; None if absent/unknown
    effective_time: datetime  # aware; derived per time_source
    time_source: TimeSource
    received_at: datetime  # aware UTC, gateway clock
    user_index: int | None  # None when the device sends no user; 0xFF = unknown user
    raw: str  # the characteristic value as hex, for provenance and quarantine
    flags: int = 0
    sequence: int | None = None
    site: str | None = None  # where on the body (thermometers): a name of mappers.codes sites
    corrections: tuple[str, ...] = ()  # firmware-profile fixes applied, said out loud
    # Coded context as (key, value) names of mappers.codes, e.g. ("meal", "preprandial").
    context: tuple[tuple[str, str], ...] = ()
    # Names of the measurement/device status bits the device set (mappers.codes status names).
    status: tuple[str, ...] = ()
    clock: ClockCheck | None = None  # the session's device-vs-gateway clock reading, if any
    battery: int | None = None  # battery % read in the session: device status, not patient data

    @property
    def timestamp_part(self) -> str:
        """PHD2 identifier timestamp: seconds since 2000-01-01 of the time *as reported*.

        Uses the device's own wall clock so that a retry, a second gateway or a replay of the
        device's memory yields the same string. Without a device time, the receipt time (with
        microseconds) is used: such readings are real-time data and cannot be recognised again.
        """
        device_time = self.device_time
        if device_time is not None:
            if device_time.tzinfo is not None:
                device_time = device_time.replace(tzinfo=None)
            delta = device_time - _EPOCH_2000
            if not delta.microseconds:  # whole seconds: the same number, without a float
                return str(delta.days * 86400 + delta.seconds)
            return str(int(delta.total_seconds()))
        delta_r = self.received_at.astimezone(UTC).replace(tzinfo=None) - _EPOCH_2000
        return f"{delta_r.total_seconds():.6f}"

    @property
    def key(self) -> str:
        """Stable gateway-side identity of this reading (independent of the patient)."""
        user = "_" if self.user_index is None else str(self.user_index)
        return f"{self.device.key}-{user}-{self.kind}-{self.timestamp_part}"


_EPOCH_2000 = datetime(2000, 1, 1)


def utcnow() -> datetime:
    """Aware UTC now (one place, so tests and code agree on the clock type)."""
    return datetime.now(UTC)
