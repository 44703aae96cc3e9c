"""The conversation every standard measurement profile shares, written once.

Connect, discover, read Device Information (and match a firmware profile), read the feature and
the battery, subscribe to the measurement characteristic, hand each value to the profile's
``to_reading``, and hang up when the device does, goes quiet, or the session runs too long.
A profile driver only says which UUIDs it uses and how a value becomes a ``Reading``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import ClassVar

from drivers import uuids
from drivers.base import ReadingSink
from drivers.codecs.battery import BatteryLevel
from drivers.codecs.current_time import AdjustReason, CurrentTime
from drivers.codecs.date_time import DateTime
from drivers.codecs.errors import DecodeError
from drivers.device_information import read_identity
from drivers.models import (
    Absent,
    ClockCheck,
    DeviceIdentity,
    Quantity,
    Reading,
    TimeSource,
    utcnow,
)
from drivers.user_data import UserConsent
from firmware_profiles import (
    ClockPolicy,
    Corrections,
    FirmwareProfile,
    TimeService,
    match_profile,
)
from gateway.link.base import Advertisement, GattConnection, Link, LinkError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SessionSummary:
    device: DeviceIdentity | None = None
    readings: int = 0
    malformed: int = 0
    skipped: int = 0  # records that are not patient data (control-solution results)
    battery: int | None = None
    feature: object | None = None
    errors: list[str] = field(default_factory=list)


def apply_corrections(
    reading: Reading, corrections: Corrections | None, profile_id: str
) -> Reading:
    """Apply a firmware profile's data-driven fixes, recording each one on the reading."""
    if corrections is None or not corrections.zero_is_unmeasured:
        return reading
    fixed: list[Quantity] = []
    notes: list[str] = []
    for quantity in reading.quantities:
        if quantity.name in corrections.zero_is_unmeasured and quantity.value == 0:
            fixed.append(replace(quantity, value=None, absent=Absent.NAN))
            notes.append(f"{quantity.name}: 0 read as not measured ({profile_id})")
        else:
            fixed.append(quantity)
    if not notes:
        return reading
    return replace(reading, quantities=tuple(fixed), corrections=reading.corrections + tuple(notes))


CLOCK_TOLERANCE = 30.0
"""Seconds a device clock may be off before the gateway corrects it (when allowed): enough to
ignore read latency and whole-second resolution, small against how readings are reviewed."""


def _wall_clock(moment: datetime, policy: ClockPolicy, zone: tzinfo) -> datetime:
    """The naive wall clock a device with ``policy`` should show at ``moment``."""
    if policy is ClockPolicy.UTC:
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment.astimezone(zone).replace(tzinfo=None)


def effective_time(
    device_time: datetime | None,
    received_at: datetime,
    policy: ClockPolicy,
    zone: tzinfo,
) -> tuple[datetime, TimeSource]:
    """Place the device's offset-less wall clock on the timeline, saying how it was done."""
    if device_time is None or policy is ClockPolicy.UNTRUSTED:
        return received_at, TimeSource.GATEWAY_RECEIPT
    if policy is ClockPolicy.UTC:
        return device_time.replace(tzinfo=UTC), TimeSource.DEVICE_UTC
    return device_time.replace(tzinfo=zone), TimeSource.DEVICE_LOCAL


@dataclass(frozen=True, slots=True, kw_only=True)
class Value:
    """One measurement value as received, with what is needed to turn it into a ``Reading``."""

    payload: bytes
    device: DeviceIdentity
    received_at: datetime  # aware UTC, gateway clock
    policy: ClockPolicy  # how to read the device clock (firmware profile)
    zone: tzinfo  # the gateway's zone, for device wall clocks
    feature: object | None = None  # the profile's static characteristic, decoded

    def reading(
        self,
        *,
        kind: str,
        characteristic: str,
        quantities: Sequence[Quantity],
        timestamp: DateTime | datetime | None,
        user_index: int | None,
        site: str | None = None,
        sequence: int | None = None,
        context: tuple[tuple[str, str], ...] = (),
        status: tuple[str, ...] = (),
    ) -> Reading:
        """The ``Reading`` every profile builds the same way: both clocks, raw bytes, flags.

        ``timestamp`` is the device's wall clock as sent (a Date Time field), or already a naive
        datetime when the profile computes it (GLS: base time + time offset).
        """
        device_time = timestamp.to_datetime() if isinstance(timestamp, DateTime) else timestamp
        effective, source = effective_time(device_time, self.received_at, self.policy, self.zone)
        return Reading(
            kind=kind,
            characteristic=characteristic,
            device=self.device,
            quantities=tuple(quantities),
            device_time=device_time,
            effective_time=effective,
            time_source=source,
            received_at=self.received_at,
            user_index=user_index,
            raw=self.payload.hex(),
            flags=self.payload[0] if self.payload else 0,
            site=site,
            sequence=sequence,
            context=context,
            status=status,
        )


@dataclass(slots=True, kw_only=True)
class Session:
    """One connection's context, shared by the driver's steps."""

    connection: GattConnection
    identity: DeviceIdentity
    profile: FirmwareProfile | None
    sink: ReadingSink
    summary: SessionSummary
    zone: tzinfo
    clock: Callable[[], datetime]
    clock_check: ClockCheck | None = None  # Current Time read (and set) this session
    user: int | None = None  # the user a multi-user device released data for, this connection
    battery_reported: bool = False

    @property
    def policy(self) -> ClockPolicy:
        return self.profile.clock if self.profile else ClockPolicy.LOCAL

    def value(self, payload: bytes, received_at: datetime | None = None) -> Value:
        return Value(
            payload=payload,
            device=self.identity,
            received_at=received_at or self.clock(),
            policy=self.policy,
            zone=self.zone,
            feature=self.summary.feature,
        )

    def finish(self, reading: Reading) -> Reading:
        """The firmware profile's corrections, recorded on the reading, and the session's device
        status: the clock check on every reading that uses the device clock (they all name the
        same coincident time stamp), the battery level on the first reading only (one battery
        Observation a session, not one a reading)."""
        if self.profile is not None:
            reading = apply_corrections(reading, self.profile.corrections, self.profile.id)
        if reading.user_index is None and self.user is not None:
            # UDS: measurements released after a user's consent are that user's, even when the
            # value omits its User ID field; never left to a device-level binding
            reading = replace(reading, user_index=self.user)
        battery = None
        if self.summary.battery is not None and not self.battery_reported:
            battery, self.battery_reported = self.summary.battery, True
        clock = self.clock_check if reading.device_time is not None else None
        if battery is None and clock is None:
            return reading
        return replace(reading, battery=battery, clock=clock)

    async def deliver(self, reading: Reading) -> None:
        """Hand over one reading; returns once the sink stored it durably."""
        await self.sink.on_reading(reading)
        self.summary.readings += 1

    async def deliver_all(self, readings: Sequence[Reading]) -> None:
        """Hand over readings in order; returns once the sink stored all of them durably."""
        if readings:
            await self.sink.on_readings(readings)
            self.summary.readings += len(readings)

    async def malformed(self, characteristic: str, payload: bytes, error: DecodeError) -> None:
        self.summary.malformed += 1
        await self.sink.on_malformed(self.identity, characteristic, payload, error)


class MeasurementDriver(abc.ABC):
    SERVICE: ClassVar[str]
    MEASUREMENT: ClassVar[str]  # indicated final records
    FEATURE: ClassVar[str | None] = None
    KIND: ClassVar[str]  # Reading.kind
    PROFILE_KIND: ClassVar[str]  # FirmwareProfile.kind of the devices it drives
    CATEGORY: ClassVar[str] = "vital-signs"

    def __init__(
        self,
        *,
        profiles: Mapping[str, FirmwareProfile],
        zone: tzinfo,
        idle_timeout: float = 5.0,
        session_timeout: float = 120.0,
        clock: Callable[[], datetime] = utcnow,
        consent_codes: Mapping[str, Mapping[int, int]] | None = None,
    ) -> None:
        self.users = UserConsent(consent_codes or {})
        self.profiles = profiles
        self.zone = zone
        self.idle_timeout = idle_timeout
        self.session_timeout = session_timeout
        self.clock = clock

    @classmethod
    @abc.abstractmethod
    def to_reading(cls, value: Value) -> Reading:
        """Decode one measurement value (raises ``DecodeError``) into a ``Reading``."""

    @classmethod
    def decode_feature(cls, data: bytes) -> object:
        raise NotImplementedError

    def matches(self, advertisement: Advertisement) -> bool:
        return self.SERVICE in advertisement.service_uuids

    async def run(
        self, link: Link, advertisement: Advertisement, sink: ReadingSink
    ) -> SessionSummary:
        summary = SessionSummary()
        connection = await link.connect(advertisement.address)
        try:
            await connection.discover()
            if not connection.has(self.MEASUREMENT):
                raise LinkError(f"device has no {uuids.NAMES[self.MEASUREMENT]} characteristic")
            identity = await read_identity(connection)
            profile = match_profile(
                self.profiles.values(),
                manufacturer=identity.manufacturer,
                model=identity.model,
                name=advertisement.name,
            )
            if profile:
                identity = replace(identity, profile_id=profile.id)
            summary.device = identity
            summary.feature = await self._read_optional(connection, self.FEATURE, summary)
            battery = await self._read_optional(connection, uuids.BATTERY_LEVEL, summary)
            summary.battery = battery.percent if isinstance(battery, BatteryLevel) else None
            clock_check = await self._check_clock(connection, profile, summary)
            user = None
            if connection.has(uuids.USER_CONTROL_POINT):  # multi-user: unlock one bound user
                user = await self.users.unlock(connection, identity)
                if user is None:
                    summary.errors.append("no bound user could be unlocked on this device")
            session = Session(
                connection=connection,
                identity=identity,
                profile=profile,
                sink=sink,
                summary=summary,
                zone=self.zone,
                clock=self.clock,
                clock_check=clock_check,
                user=user,
            )
            await self.collect(session)
        finally:
            await connection.disconnect()
        return summary

    async def collect(self, session: Session) -> None:
        """Indicated profiles: every indication is a final record, delivered as it comes."""
        activity = asyncio.Event()

        async def on_measurement(payload: bytes) -> None:
            activity.set()
            try:
                reading = session.finish(self.to_reading(session.value(payload)))
            except DecodeError as exc:
                await session.malformed(self.MEASUREMENT, payload, exc)
                return
            await session.deliver(reading)

        await session.connection.subscribe(self.MEASUREMENT, on_measurement)
        await self._wait_until_done(session.connection, activity)

    async def _check_clock(
        self, connection: GattConnection, profile: FirmwareProfile | None, summary: SessionSummary
    ) -> ClockCheck | None:
        """Read the device clock against the gateway's; set it when the profile allows it and
        it is off (or unknown, or the model needs it set before it hands out records)."""
        if not connection.has(uuids.CURRENT_TIME):
            return None
        time_service = profile.time if profile is not None else TimeService(current_time=True)
        policy = profile.clock if profile is not None else ClockPolicy.LOCAL
        gateway_time = self.clock()
        try:
            value = await connection.read(uuids.CURRENT_TIME)
            device_time = CurrentTime.decode(value).to_datetime()
        except DecodeError as exc:
            summary.errors.append(str(exc))
            device_time = None
        except LinkError as exc:  # e.g. the clock needs a bonded link: readings still come
            summary.errors.append(f"cannot read the device clock: {exc}")
            return None
        wall = _wall_clock(gateway_time, policy, self.zone)
        drift = None if device_time is None else abs((device_time - wall).total_seconds())
        set_to = None
        if time_service.writable and (
            drift is None or drift > CLOCK_TOLERANCE or time_service.set_before_records
        ):
            set_to = _wall_clock(self.clock(), policy, self.zone)
            correction = CurrentTime.from_datetime(
                set_to, adjust_reason=AdjustReason(external_reference_time_update=True)
            )
            try:
                await connection.write(uuids.CURRENT_TIME, correction.encode())
            except LinkError as exc:  # the device refused: readings keep their own clock
                summary.errors.append(f"cannot set the device clock: {exc}")
                set_to = None
        log.debug("device clock %s, gateway %s, set to %s", device_time, wall, set_to)
        return ClockCheck(device_time=device_time, gateway_time=gateway_time, set_to=set_to)

    async def _read_optional(
        self, connection: GattConnection, uuid: str | None, summary: SessionSummary
    ) -> object | None:
        if uuid is None or not connection.has(uuid):
            return None
        try:
            data = await connection.read(uuid)
            if uuid == uuids.BATTERY_LEVEL:
                return BatteryLevel.decode(data)
            return self.decode_feature(data)
        except DecodeError as exc:
            summary.errors.append(str(exc))
            return None

    async def _wait_until_done(self, connection: GattConnection, activity: asyncio.Event) -> None:
        """Until the device hangs up, goes quiet for ``idle_timeout``, or the session ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.session_timeout
        while connection.is_connected and loop.time() < deadline:
            activity.clear()
            if await connection.wait_disconnected(self.idle_timeout):
                return
            if not activity.is_set():
                return
