"""Decoded models as JSON-safe data, for ``edge decode`` output and quarantine records.

Exactness survives the trip: a Decimal becomes its string with the device's exponent
("65.700"), never a float, and raw fields are shown next to the computed values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum, StrEnum

from .blood_pressure import (
    BloodPressureFeature,
    BloodPressureMeasurement,
    IntermediateCuffPressure,
    MeasurementStatus,
)
from .date_time import DateTime
from .device_information import SystemId
from .health_thermometer import (
    IntermediateTemperature,
    MeasurementInterval,
    TemperatureMeasurement,
    TemperatureType,
)
from .ieee11073 import MedFloat
from .weight_scale import WeightMeasurement, WeightScaleFeature

# Computed properties shown under "values" next to a model's raw fields.
_VALUES: dict[type, tuple[str, ...]] = {
    WeightMeasurement: (
        "flags",
        "unsuccessful",
        "weight",
        "weight_unit",
        "bmi",
        "bmi_unit",
        "height",
        "height_unit",
        "user_unknown",
    ),
    WeightScaleFeature: ("weight_resolution_text", "height_resolution_text"),
    SystemId: ("eui64", "dashed"),
    MedFloat: ("value",),
    BloodPressureMeasurement: (
        "flags",
        "systolic_value",
        "diastolic_value",
        "mean_arterial_pressure_value",
        "pressure_unit",
        "pulse_rate_value",
        "pulse_rate_unit",
        "user_unknown",
    ),
    IntermediateCuffPressure: (
        "flags",
        "cuff_pressure_value",
        "pressure_unit",
        "pulse_rate_value",
        "pulse_rate_unit",
        "user_unknown",
    ),
    MeasurementStatus: ("raw",),
    BloodPressureFeature: ("bits",),
    TemperatureMeasurement: (
        "flags",
        "temperature_value",
        "temperature_unit",
        "site",
        "temperature_type_text",
    ),
    IntermediateTemperature: (
        "flags",
        "temperature_value",
        "temperature_unit",
        "site",
        "temperature_type_text",
    ),
    TemperatureType: ("site", "text"),
    MeasurementInterval: ("periodic",),
}


def to_jsonable(obj: object) -> object:
    """Turn a decoded value (or anything it contains) into dicts, lists, str, int, bool, None.

    Enums: a StrEnum gives its value, other enums their name. Bytes give lower-case hex. A
    DateTime gives ``{"iso": text or None, "year": …, …}``. TypeError for anything else.
    """
    if isinstance(obj, Enum):
        return obj.value if isinstance(obj, StrEnum) else obj.name
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj).hex()
    if isinstance(obj, datetime | date | time):
        return obj.isoformat()
    if isinstance(obj, DateTime):
        wall = obj.to_datetime()
        parts = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {"iso": None if wall is None else wall.isoformat(), **parts}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, object] = {
            f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
        }
        names = _VALUES.get(type(obj))
        if names:
            out["values"] = {name: to_jsonable(getattr(obj, name)) for name in names}
        return out
    if isinstance(obj, Mapping):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(item) for item in obj]
    raise TypeError(f"no JSON form for {type(obj).__name__}")
