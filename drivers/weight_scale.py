"""Weight Scale Service: how a Weight Measurement indication becomes a ``Reading``.

The conversation itself (stored burst, live readings, hang-up) is ``drivers.session``'s.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from drivers import uuids
from drivers.codecs.weight_scale import WeightMeasurement, WeightScaleFeature
from drivers.models import Absent, DeviceIdentity, Quantity, Reading
from drivers.session import MeasurementDriver, effective_time
from firmware_profiles import ClockPolicy

KIND = "weight"
CATEGORY = "vital-signs"


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


class WeightScaleDriver(MeasurementDriver):
    SERVICE = uuids.WEIGHT_SCALE_SERVICE
    MEASUREMENT = uuids.WEIGHT_MEASUREMENT
    FEATURE = uuids.WEIGHT_SCALE_FEATURE
    KIND = KIND
    PROFILE_KIND = "weight-scale"

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
        return reading_from_measurement(
            WeightMeasurement.decode(payload),
            payload=payload,
            device=device,
            received_at=received_at,
            policy=policy,
            zone=zone,
        )

    @classmethod
    def decode_feature(cls, data: bytes) -> WeightScaleFeature:
        return WeightScaleFeature.decode(data)
