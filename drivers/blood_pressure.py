"""Blood Pressure Service: how a Blood Pressure Measurement indication becomes a ``Reading``.

Systolic, diastolic and mean arterial pressure are one measurement (a compound Observation
downstream); a special SFLOAT (real monitors send MAP = NaN) stays an explicit ``Absent`` marker.
Intermediate Cuff Pressure notifications are transient display values and are never subscribed to.
"""

from __future__ import annotations

from drivers import uuids
from drivers.codecs.blood_pressure import BloodPressureFeature, BloodPressureMeasurement
from drivers.codecs.ieee11073 import MedFloat
from drivers.models import Absent, Quantity, Reading
from drivers.session import MeasurementDriver, Value

KIND = "blood-pressure"


def _quantity(name: str, value: MedFloat, unit: str) -> Quantity:
    if value.special is not None:
        return Quantity(name=name, value=None, unit=unit, absent=Absent(value.special.value))
    return Quantity(name=name, value=value.value, unit=unit)


def reading_from_bp_measurement(measurement: BloodPressureMeasurement, value: Value) -> Reading:
    """Turn a decoded Blood Pressure Measurement into a ``Reading`` (pure)."""
    unit = measurement.pressure_unit
    quantities = [
        _quantity("systolic", measurement.systolic, unit),
        _quantity("diastolic", measurement.diastolic, unit),
        _quantity("mean-arterial-pressure", measurement.mean_arterial_pressure, unit),
    ]
    if measurement.pulse_rate is not None:
        quantities.append(
            _quantity("pulse-rate", measurement.pulse_rate, measurement.pulse_rate_unit)
        )
    return value.reading(
        kind=KIND,
        characteristic=uuids.BLOOD_PRESSURE_MEASUREMENT,
        quantities=quantities,
        timestamp=measurement.timestamp,
        user_index=measurement.user_id,
    )


class BloodPressureDriver(MeasurementDriver):
    SERVICE = uuids.BLOOD_PRESSURE_SERVICE
    MEASUREMENT = uuids.BLOOD_PRESSURE_MEASUREMENT
    FEATURE = uuids.BLOOD_PRESSURE_FEATURE
    KIND = KIND
    PROFILE_KIND = "blood-pressure"

    @classmethod
    def to_reading(cls, value: Value) -> Reading:
        return reading_from_bp_measurement(BloodPressureMeasurement.decode(value.payload), value)

    @classmethod
    def decode_feature(cls, data: bytes) -> BloodPressureFeature:
        return BloodPressureFeature.decode(data)
