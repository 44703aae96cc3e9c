"""Health Thermometer Service: how a Temperature Measurement indication becomes a ``Reading``.

The body site comes from the measurement's own Temperature Type field or, failing that, from the
static Temperature Type characteristic read at connection (a device uses one or the other).
Intermediate Temperature notifications are display values and are never subscribed to.
"""

from __future__ import annotations

from drivers import uuids
from drivers.codecs.health_thermometer import (
    TemperatureMeasurement,
    TemperatureSite,
    TemperatureType,
)
from drivers.models import Absent, Quantity, Reading
from drivers.session import MeasurementDriver, Value

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


def reading_from_temperature(measurement: TemperatureMeasurement, value: Value) -> Reading:
    """Turn a decoded Temperature Measurement into a ``Reading`` (pure)."""
    temperature = measurement.temperature
    unit = measurement.temperature_unit
    if temperature.special is not None:
        absent = Absent(temperature.special.value)
        quantity = Quantity(name="body-temperature", value=None, unit=unit, absent=absent)
    else:
        quantity = Quantity(name="body-temperature", value=temperature.value, unit=unit)
    static = value.feature if isinstance(value.feature, TemperatureType) else None
    site = measurement.site or (static.site if static is not None else None)
    return value.reading(
        kind=KIND,
        characteristic=uuids.TEMPERATURE_MEASUREMENT,
        quantities=[quantity],
        timestamp=measurement.timestamp,
        user_index=None,
        site=SITE_NAMES[site] if site is not None else None,
    )


class HealthThermometerDriver(MeasurementDriver):
    SERVICE = uuids.HEALTH_THERMOMETER_SERVICE
    MEASUREMENT = uuids.TEMPERATURE_MEASUREMENT
    FEATURE = uuids.TEMPERATURE_TYPE  # static body site, when the device has one
    KIND = KIND
    PROFILE_KIND = "thermometer"

    @classmethod
    def to_reading(cls, value: Value) -> Reading:
        return reading_from_temperature(TemperatureMeasurement.decode(value.payload), value)

    @classmethod
    def decode_feature(cls, data: bytes) -> TemperatureType:
        return TemperatureType.decode(data)
