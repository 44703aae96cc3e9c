"""Every profile driver, in one explicit list (no discovery magic)."""

from __future__ import annotations

from collections.abc import Callable

from drivers import uuids
from drivers.blood_pressure import BloodPressureDriver
from drivers.body_composition import BodyCompositionDriver
from drivers.cgm import CgmDriver
from drivers.glucose import GlucoseDriver
from drivers.health_thermometer import HealthThermometerDriver
from drivers.models import Reading
from drivers.pulse_oximeter import PulseOximeterDriver, continuous_reading
from drivers.session import MeasurementDriver, Value
from drivers.weight_scale import WeightScaleDriver

DRIVERS: tuple[type[MeasurementDriver], ...] = (
    WeightScaleDriver,
    BloodPressureDriver,
    HealthThermometerDriver,
    GlucoseDriver,
    CgmDriver,
    BodyCompositionDriver,
    PulseOximeterDriver,
)

BY_MEASUREMENT: dict[str, type[MeasurementDriver]] = {d.MEASUREMENT: d for d in DRIVERS}
BY_KIND: dict[str, type[MeasurementDriver]] = {d.KIND: d for d in DRIVERS}
BY_PROFILE_KIND: dict[str, type[MeasurementDriver]] = {d.PROFILE_KIND: d for d in DRIVERS}
SERVICES: tuple[str, ...] = tuple(d.SERVICE for d in DRIVERS)

# Every characteristic whose value is a reading on its own, and how it becomes one (``edge decode
# --fhir``): each driver's measurement, plus the oximeter's continuous stream.
READINGS: dict[str, Callable[[Value], Reading]] = {
    **{d.MEASUREMENT: d.to_reading for d in DRIVERS},
    uuids.PLX_CONTINUOUS_MEASUREMENT: continuous_reading,
}
