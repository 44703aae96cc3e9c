"""Weight Scale Service driver: the GATT conversation with a scale, ending in ``Reading``s.

Connect, read Device Information and the Weight Scale Feature, subscribe to Weight Measurement
indications, take the stored burst and any live readings, and hang up when the scale does (or
after a quiet period). Per-model quirks come from the matched firmware profile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo

from drivers import uuids
from drivers.base import ReadingSink
from drivers.codecs.battery import BatteryLevel
from drivers.codecs.errors import DecodeError
from drivers.codecs.weight_scale import WeightMeasurement, WeightScaleFeature
from drivers.device_information import read_identity
from drivers.models import Absent, DeviceIdentity, Quantity, Reading, TimeSource, utcnow
from firmware_profiles import ClockPolicy, FirmwareProfile, match_profile
from gateway.link.base import Advertisement, GattConnection, Link, LinkError

log = logging.getLogger(__name__)

KIND = "weight"
CATEGORY = "vital-signs"


@dataclass(slots=True)
class SessionSummary:
    device: DeviceIdentity | None = None
    readings: int = 0
    malformed: int = 0
    battery: int | None = None
    feature: WeightScaleFeature | None = None
    errors: list[str] = field(default_factory=list)


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


def reading_from_measurement(
    measurement: WeightMeasurement,
    *,
    payload: bytes,
    device: DeviceIdentity,
    received_at: datetime,
    policy: ClockPolicy,
    zone: tzinfo,
) -> Reading:
    """Turn a decoded Weight Measurement into a ``Reading`` (pure; used by ``edge decode`` too)."""
    if measurement.unsuccessful:
        weight = Quantity(
            name="body-weight", value=None, unit=measurement.weight_unit, absent=Absent.UNSUCCESSFUL
        )
    else:
        weight = Quantity(
            name="body-weight", value=measurement.weight, unit=measurement.weight_unit
        )
    quantities = [weight]
    if measurement.height is not None:
        quantities.append(
            Quantity(name="body-height", value=measurement.height, unit=measurement.height_unit)
        )
    if measurement.bmi is not None:
        quantities.append(Quantity(name="bmi", value=measurement.bmi, unit="kg/m2"))
    device_time = measurement.timestamp.to_datetime() if measurement.timestamp else None
    effective, source = effective_time(device_time, received_at, policy, zone)
    return Reading(
        kind=KIND,
        characteristic=uuids.WEIGHT_MEASUREMENT,
        device=device,
        quantities=tuple(quantities),
        device_time=device_time,
        effective_time=effective,
        time_source=source,
        received_at=received_at,
        user_index=measurement.user_id,
        raw=payload.hex(),
        flags=payload[0] if payload else 0,
    )


class WeightScaleDriver:
    SERVICE = uuids.WEIGHT_SCALE_SERVICE

    def __init__(
        self,
        *,
        profiles: Mapping[str, FirmwareProfile],
        zone: tzinfo,
        idle_timeout: float = 5.0,
        session_timeout: float = 120.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.profiles = profiles
        self.zone = zone
        self.idle_timeout = idle_timeout
        self.session_timeout = session_timeout
        self.clock = clock

    def matches(self, advertisement: Advertisement) -> bool:
        return self.SERVICE in advertisement.service_uuids

    async def run(
        self, link: Link, advertisement: Advertisement, sink: ReadingSink
    ) -> SessionSummary:
        summary = SessionSummary()
        connection = await link.connect(advertisement.address)
        try:
            await connection.discover()
            if not connection.has(uuids.WEIGHT_MEASUREMENT):
                raise LinkError("device has no Weight Measurement characteristic")
            identity = await read_identity(connection)
            profile = match_profile(
                self.profiles.values(),
                manufacturer=identity.manufacturer,
                model=identity.model,
                name=advertisement.name,
            )
            policy = profile.clock if profile else ClockPolicy.LOCAL
            if profile:
                identity = replace(identity, profile_id=profile.id)
            summary.device = identity
            if connection.has(uuids.WEIGHT_SCALE_FEATURE):
                try:
                    summary.feature = WeightScaleFeature.decode(
                        await connection.read(uuids.WEIGHT_SCALE_FEATURE)
                    )
                except DecodeError as exc:
                    summary.errors.append(str(exc))
            if connection.has(uuids.BATTERY_LEVEL):
                try:
                    summary.battery = BatteryLevel.decode(
                        await connection.read(uuids.BATTERY_LEVEL)
                    ).percent
                except DecodeError as exc:
                    summary.errors.append(str(exc))

            activity = asyncio.Event()

            async def on_measurement(payload: bytes) -> None:
                activity.set()
                received_at = self.clock()
                try:
                    measurement = WeightMeasurement.decode(payload)
                except DecodeError as exc:
                    summary.malformed += 1
                    await sink.on_malformed(identity, uuids.WEIGHT_MEASUREMENT, payload, exc)
                    return
                reading = reading_from_measurement(
                    measurement,
                    payload=payload,
                    device=identity,
                    received_at=received_at,
                    policy=policy,
                    zone=self.zone,
                )
                await sink.on_reading(reading)
                summary.readings += 1

            await connection.subscribe(uuids.WEIGHT_MEASUREMENT, on_measurement)
            await self._wait_until_done(connection, activity)
        finally:
            await connection.disconnect()
        return summary

    async def _wait_until_done(self, connection: GattConnection, activity: asyncio.Event) -> None:
        """Until the scale hangs up, goes quiet for ``idle_timeout``, or the session is too long."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.session_timeout
        while connection.is_connected and loop.time() < deadline:
            activity.clear()
            gone = await connection.wait_disconnected(self.idle_timeout)
            if gone:
                return
            if not activity.is_set():
                return
