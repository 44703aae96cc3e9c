"""Which decoder handles which characteristic, for ``edge decode`` and the drivers.

An explicit dict rather than discovery magic, so the supported set can be read in one place.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

from .battery import BatteryLevel
from .blood_pressure import BloodPressureFeature, BloodPressureMeasurement, IntermediateCuffPressure
from .body_composition import BodyCompositionFeature, BodyCompositionMeasurement
from .cgm import (
    CgmFeature,
    CgmMeasurement,
    CgmSessionRunTime,
    CgmSessionStartTime,
    CgmStatus,
    SocpResponse,
)
from .current_time import CurrentTime, LocalTimeInformation
from .date_time import DateTime
from .device_information import DIS_STRINGS, SystemId, decode_dis_string
from .glucose import GlucoseFeature, GlucoseMeasurement, GlucoseMeasurementContext
from .health_thermometer import (
    IntermediateTemperature,
    MeasurementInterval,
    TemperatureMeasurement,
    TemperatureType,
)
from .pulse_oximeter import PlxContinuous, PlxFeatures, PlxSpotCheck
from .racp import decode_racp
from .regulatory import RegulatoryCertificationDataList
from .user_data import DatabaseChangeIncrement, UserIndex, decode_control_point
from .weight_scale import WeightMeasurement, WeightScaleFeature

# 16-bit UUID as 4 upper-case hex digits -> decoder of that characteristic's value.
DECODERS: dict[str, Callable[[bytes], object]] = {
    "2A9D": WeightMeasurement.decode,
    "2A9E": WeightScaleFeature.decode,
    "2A23": SystemId.decode,
    **{uuid: partial(decode_dis_string, characteristic=uuid) for uuid in DIS_STRINGS},
    "2A19": BatteryLevel.decode,
    "2A08": DateTime.decode,
    "2A35": BloodPressureMeasurement.decode,
    "2A36": IntermediateCuffPressure.decode,
    "2A49": BloodPressureFeature.decode,
    "2A1C": TemperatureMeasurement.decode,
    "2A1E": IntermediateTemperature.decode,
    "2A1D": TemperatureType.decode,
    "2A21": MeasurementInterval.decode,
    "2A2A": RegulatoryCertificationDataList.decode,
    "2A9C": BodyCompositionMeasurement.decode,
    "2A9B": BodyCompositionFeature.decode,
    "2A18": GlucoseMeasurement.decode,
    "2A34": GlucoseMeasurementContext.decode,
    "2A51": GlucoseFeature.decode,
    "2A52": decode_racp,
    "2AA7": CgmMeasurement.decode,
    "2AA8": CgmFeature.decode,
    "2AA9": CgmStatus.decode,
    "2AAA": CgmSessionStartTime.decode,
    "2AAB": CgmSessionRunTime.decode,
    "2AAC": SocpResponse.decode,
    "2A5E": PlxSpotCheck.decode,
    "2A5F": PlxContinuous.decode,
    "2A60": PlxFeatures.decode,
    "2A2B": CurrentTime.decode,
    "2A0F": LocalTimeInformation.decode,
    "2A9A": UserIndex.decode,
    "2A99": DatabaseChangeIncrement.decode,
    "2A9F": decode_control_point,
}

_SIG_BASE = re.compile(r"0000([0-9A-F]{4})-0000-1000-8000-00805F9B34FB")


def normalize_uuid(text: str) -> str:
    """``2a9d``, ``0x2A9D`` or the full SIG-base 128-bit form -> ``2A9D``; ValueError otherwise."""
    upper = text.strip().upper()
    short = upper.removeprefix("0X")
    if re.fullmatch(r"[0-9A-F]{4}", short):
        return short
    match = _SIG_BASE.fullmatch(upper)
    if match is None:
        raise ValueError("not a 16-bit SIG characteristic UUID")
    return match.group(1)


def decoder_for(uuid: str) -> Callable[[bytes], object] | None:
    """The decoder for ``uuid`` in any form ``normalize_uuid`` accepts, None if unsupported."""
    return DECODERS.get(normalize_uuid(uuid))
