"""Every profile driver, in one explicit list (no discovery magic)."""

from __future__ import annotations

from drivers.blood_pressure import BloodPressureDriver
from drivers.body_composition import BodyCompositionDriver
from drivers.cgm import CgmDriver
from drivers.glucose import GlucoseDriver
from drivers.health_thermometer import HealthThermometerDriver
from drivers.pulse_oximeter import PulseOximeterDriver
from drivers.session import MeasurementDriver
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
