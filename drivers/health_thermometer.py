"""Health Thermometer Service: how a Temperature Measurement indication becomes a ``Reading``.

The body site comes from the measurement's own Temperature Type field or, failing that, from the
static Temperature Type characteristic read at connection (a device uses one or the other).
Intermediate Temperature notifications are display values and are never subscribed to.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from drivers import uuids
from drivers.codecs.health_thermometer import (
    TemperatureMeasurement,
    TemperatureSite,
    TemperatureType,
)
from drivers.models import Absent, DeviceIdentity, Quantity, Reading
from drivers.session import MeasurementDriver, effective_time
from firmware_profiles import ClockPolicy

KIND = "body-temperature"

SITE_NAMES = {
    TemperatureSite.ARMPIT: "armpit",
    TemperatureSite.BODY: "body",
    TemperatureSite.EAR: "ear",
    TemperatureSite.FINGER: "finger",
    TemperatureSite.GASTROINTESTINAL_TRACT: "gastro-intestinal-tract",
    TemperatureSite.MOUTH: "mouth",
    TemperatureSite.RECTUM: "rectum",
    TemperatureSite.TOE: "toe",
    TemperatureSite.TYMPANUM: "tympanum",
}


def reading_from_temperature(
    measurement: TemperatureMeasurement,
    *,
    payload: bytes,
    device: DeviceIdentity,
    received_at: datetime,
    policy: ClockPolicy,
    zone: tzinfo,
    static_type: TemperatureType | None = None,
) -> Reading:
    """Turn a decoded Temperature Measurement into a ``Reading`` (pure)."""
    value = measurement.temperature
    unit = measurement.temperature_unit
    if value.special is not None:
        quantity = Quantity(
            name="body-temperature", value=None, unit=unit, absent=Absent(value.special.value)
        )
    else:
        quantity = Quantity(name="body-temperature", value=value.value, unit=unit)
    site = measurement.site or (static_type.site if static_type is not None else None)
    device_time = measurement.timestamp.to_datetime() if measurement.timestamp else None
    effective, source = effective_time(device_time, received_at, policy, zone)
    return Reading(
        kind=KIND,
        characteristic=uuids.TEMPERATURE_MEASUREMENT,
        device=device,
        quantities=(quantity,),
        device_time=device_time,
        effective_time=effective,
        time_source=source,
        received_at=received_at,
        user_index=None,
        raw=payload.hex(),
        flags=payload[0] if payload else 0,
        site=SITE_NAMES[site] if site is not None else None,
    )


class HealthThermometerDriver(MeasurementDriver):
    SERVICE = uuids.HEALTH_THERMOMETER_SERVICE
    MEASUREMENT = uuids.TEMPERATURE_MEASUREMENT
    FEATURE = uuids.TEMPERATURE_TYPE  # static body site, when the device has one
    KIND = KIND
    PROFILE_KIND = "thermometer"

    @classmethod
    def to_reading(
        cls,
        payload: bytes,
        *,
        device: DeviceIdentity,
        received_at: datetime,
        policy: ClockPolicy,
        zone: tzinfo,
        feature: object | None = None,
    ) -> Reading:
        return reading_from_temperature(
            TemperatureMeasurement.decode(payload),
            payload=payload,
            device=device,
            received_at=received_at,
            policy=policy,
            zone=zone,
            static_type=feature if isinstance(feature, TemperatureType) else None,
        )

    @classmethod
    def decode_feature(cls, data: bytes) -> TemperatureType:
        return TemperatureType.decode(data)
