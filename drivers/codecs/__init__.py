"""GATT characteristic codecs: bytes <-> frozen, exact models (standard library only).

Each module owns one characteristic family and both directions, so the drivers (decode) and the
emulated peripherals (encode) cannot drift apart. Every malformed value raises ``DecodeError``.
"""

from .battery import BatteryLevel
from .blood_pressure import (
    BloodPressureFeature,
    BloodPressureMeasurement,
    IntermediateCuffPressure,
    MeasurementStatus,
    PressureUnit,
    PulseRateRange,
)
from .date_time import DateTime
from .device_information import DIS_STRINGS, SystemId, decode_dis_string, encode_dis_string
from .errors import DecodeError
from .health_thermometer import (
    IntermediateTemperature,
    MeasurementInterval,
    TemperatureMeasurement,
    TemperatureSite,
    TemperatureType,
    TemperatureUnit,
)
from .ieee11073 import (
    MedFloat,
    Special,
    float_from_raw,
    float_to_raw,
    read_float,
    read_sfloat,
    sfloat_from_raw,
    sfloat_to_raw,
    write_float,
    write_sfloat,
)
from .jsonable import to_jsonable
from .registry import DECODERS, decoder_for, normalize_uuid
from .weight_scale import Units, WeightMeasurement, WeightScaleFeature

__all__ = [
    "DECODERS",
    "DIS_STRINGS",
    "BatteryLevel",
    "BloodPressureFeature",
    "BloodPressureMeasurement",
    "DateTime",
    "DecodeError",
    "IntermediateCuffPressure",
    "IntermediateTemperature",
    "MeasurementInterval",
    "MeasurementStatus",
    "MedFloat",
    "PressureUnit",
    "PulseRateRange",
    "Special",
    "SystemId",
    "TemperatureMeasurement",
    "TemperatureSite",
    "TemperatureType",
    "TemperatureUnit",
    "Units",
    "WeightMeasurement",
    "WeightScaleFeature",
    "decode_dis_string",
    "decoder_for",
    "encode_dis_string",
    "float_from_raw",
    "float_to_raw",
    "normalize_uuid",
    "read_float",
    "read_sfloat",
    "sfloat_from_raw",
    "sfloat_to_raw",
    "to_jsonable",
    "write_float",
    "write_sfloat",
]
