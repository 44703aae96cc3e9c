"""Weight Scale Service: how a Weight Measurement indication becomes a ``Reading``.

The conversation itself (stored burst, live readings, hang-up) is ``drivers.session``'s.
"""

from __future__ import annotations

from drivers import uuids
from drivers.codecs.weight_scale import WeightMeasurement, WeightScaleFeature
from drivers.models import Absent, Quantity, Reading
from drivers.session import MeasurementDriver, Value

KIND = "weight"
CATEGORY = "vital-signs"


def reading_from_measurement(measurement: WeightMeasurement, value: Value) -> Reading:
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
    height, bmi = measurement.height, measurement.bmi
    if height is not None:
        quantities.append(Quantity(name="body-height", value=height, unit=measurement.height_unit))
    if bmi is not None:
        quantities.append(Quantity(name="bmi", value=bmi, unit="kg/m2"))
    return value.reading(
        kind=KIND,
        characteristic=uuids.WEIGHT_MEASUREMENT,
        quantities=quantities,
        timestamp=measurement.timestamp,
        user_index=measurement.user_id,
    )


class WeightScaleDriver(MeasurementDriver):
    SERVICE = uuids.WEIGHT_SCALE_SERVICE
    MEASUREMENT = uuids.WEIGHT_MEASUREMENT
    FEATURE = uuids.WEIGHT_SCALE_FEATURE
    KIND = KIND
    PROFILE_KIND = "weight-scale"

    @classmethod
    def to_reading(cls, value: Value) -> Reading:
        return reading_from_measurement(WeightMeasurement.decode(value.payload), value)

    @classmethod
    def decode_feature(cls, data: bytes) -> WeightScaleFeature:
        return WeightScaleFeature.decode(data)
