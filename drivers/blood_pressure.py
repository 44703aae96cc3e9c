"""Blood Pressure Service: how a Blood Pressure Measurement indication becomes a ``Reading``.

Systolic, diastolic and mean arterial pressure are one measurement (a compound Observation
downstream); a special SFLOAT (real monitors send MAP = NaN) stays an explicit ``Absent`` marker.
Intermediate Cuff Pressure notifications are transient display values and are never subscribed to.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from drivers import uuids
from drivers.codecs.blood_pressure import BloodPressureFeature, BloodPressureMeasurement
from drivers.codecs.ieee11073 import MedFloat
from drivers.models import Absent, DeviceIdentity, Quantity, Reading
from drivers.session import MeasurementDriver, effective_time
from firmware_profiles import ClockPolicy

KIND = "blood-pressure"


def _quantity(name: str, value: MedFloat, unit: str) -> Quantity:
    if value.special is not None:
        return Quantity(name=name, value=None, unit=unit, absent=Absent(value.special.value))
    return Quantity(name=name, value=value.value, unit=unit)


def reading_from_bp_measurement(
    measurement: BloodPressureMeasurement,
    *,
    payload: bytes,
    device: DeviceIdentity,
    received_at: datetime,
    policy: ClockPolicy,
    zone: tzinfo,
) -> Reading:
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
    device_time = measurement.timestamp.to_datetime() if measurement.timestamp else None
    effective, source = effective_time(device_time, received_at, policy, zone)
    return Reading(
        kind=KIND,
        characteristic=uuids.BLOOD_PRESSURE_MEASUREMENT,
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


class BloodPressureDriver(MeasurementDriver):
    SERVICE = uuids.BLOOD_PRESSURE_SERVICE
    MEASUREMENT = uuids.BLOOD_PRESSURE_MEASUREMENT
    FEATURE = uuids.BLOOD_PRESSURE_FEATURE
    KIND = KIND
    PROFILE_KIND = "blood-pressure"

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
        return reading_from_bp_measurement(
            BloodPressureMeasurement.decode(payload),
            payload=payload,
            device=device,
            received_at=received_at,
            policy=policy,
            zone=zone,
        )

    @classmethod
    def decode_feature(cls, data: bytes) -> BloodPressureFeature:
        return BloodPressureFeature.decode(data)
