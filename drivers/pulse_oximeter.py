"""Pulse Oximeter Service: spot-checks as final records, the continuous stream downsampled.

A PLX Spot-check Measurement is indicated and confirmed: each one is a final record, delivered as
it comes. PLX Continuous Measurement is a notified stream, several samples a second on real
sensors, with no time stamp: storing every sample would flood the record, so the driver keeps at
most one per ``continuous_period`` (spec §13: downsample PLX Continuous as a stream), the first of
each period that the sensor itself did not flag as unreliable. A continuous sample's time is the
gateway's receipt time, and so is a spot-check's when the oximeter says its clock is not set.

Status bits become ``Reading.status`` names the mappers know: Measurement Status conditions
(``mappers.codes.CONDITIONS``) and Device and Sensor Status bits (``SPO2_STATUS``, whose IEEE
11073-10404 bit order is the reverse of the PLXS one). The pulse amplitude index has no confirmed
code, so it stays in the raw bytes only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from drivers import uuids
from drivers.codecs.errors import DecodeError
from drivers.codecs.ieee11073 import MedFloat
from drivers.codecs.pulse_oximeter import (
    PlxContinuous,
    PlxDeviceSensorStatus,
    PlxFeatures,
    PlxMeasurementStatus,
    PlxSpotCheck,
)
from drivers.models import Absent, Quantity, Reading
from drivers.session import MeasurementDriver, Session, Value
from firmware_profiles import ClockPolicy

log = logging.getLogger(__name__)

KIND = "spo2"

# Measurement Status bit -> measurement-status condition (mappers.status). Measurement ongoing,
# validated, fully qualified and "from storage" say nothing about the value's use: not reported.
CONDITIONS = {
    "invalid_measurement": "invalid-measurement",
    "questionable_measurement": "questionable-measurement",
    "measurement_unavailable": "measurement-unavailable",
    "calibration_ongoing": "calibration-ongoing",
    "early_estimated_data": "early-estimate",
    "data_for_demonstration": "demonstration-data",
    "data_for_testing": "testing-data",
}
# PLXS Device and Sensor Status bit (0 first) -> MDC_PULS_OXIM_DEV_STATUS bit name
# (mappers.codes.SPO2_STATUS): PLXS bit n is 10404 bit 15 - n.
DEVICE_STATUS_NAMES = {
    "extended_display_update_ongoing": "device-extended-update",
    "equipment_malfunction": "device-equipment-malfunction",
    "signal_processing_irregularity": "signal-processing-irregularity",
    "inadequate_signal": "signal-inadequate",
    "poor_signal": "signal-poor",
    "low_perfusion": "signal-low-perfusion",
    "erratic_signal": "signal-erratic",
    "nonpulsatile_signal": "signal-non-pulsatile",
    "questionable_pulse": "signal-pulse-questionable",
    "signal_analysis_ongoing": "signal-searching",
    "sensor_interference": "sensor-interference",
    "sensor_unconnected_to_user": "sensor-off",
    "unknown_sensor_connected": "sensor-unsupported",
    "sensor_displaced": "sensor-displaced",
    "sensor_malfunctioning": "sensor-malfunction",
    "sensor_disconnected": "sensor-disconnected",
}

PlxMeasurement = PlxSpotCheck | PlxContinuous
_Decoded = TypeVar("_Decoded")


def _quantity(name: str, value: MedFloat, unit: str) -> Quantity:
    absent = Absent(value.special.value) if value.special is not None else None
    return Quantity(name=name, value=value.value, unit=unit, absent=absent)


def status_names(
    status: PlxMeasurementStatus | None, device: PlxDeviceSensorStatus | None
) -> tuple[str, ...]:
    """Conditions first, then device/sensor bits, each in bit order of its table."""
    names = [name for attr, name in CONDITIONS.items() if status and getattr(status, attr)]
    names += [
        name for attr, name in DEVICE_STATUS_NAMES.items() if device and getattr(device, attr)
    ]
    return tuple(names)


def reading_from_plx(measurement: PlxMeasurement, value: Value) -> Reading:
    """Turn a decoded spot-check or continuous sample into a ``Reading`` (pure).

    A spot-check flagged "device clock not set" is read like a profile with an untrusted clock:
    its time stamp is kept as reported (``device_time``, hence a stable reading key when the
    device sends it again) but the reading is placed at the gateway's receipt time.
    """
    timestamp = None
    if isinstance(measurement, PlxSpotCheck):
        timestamp = measurement.timestamp
        if measurement.device_clock_not_set:
            value = replace(value, policy=ClockPolicy.UNTRUSTED)
    return value.reading(
        kind=KIND,
        characteristic=measurement.CHARACTERISTIC,
        quantities=[
            _quantity("spo2", measurement.spo2, measurement.percent_unit),
            _quantity("pulse-rate", measurement.pulse_rate, measurement.pulse_rate_unit),
        ],
        timestamp=timestamp,
        user_index=None,
        status=status_names(measurement.measurement_status, measurement.device_sensor_status),
    )


def continuous_reading(value: Value) -> Reading:
    """One continuous sample as a ``Reading`` (``edge decode 2A5F --fhir``)."""
    return reading_from_plx(PlxContinuous.decode(value.payload), value)


def trustworthy(sample: PlxContinuous) -> bool:
    """Whether a continuous sample may stand for its period.

    Not when its Measurement Status says invalid, questionable or unavailable, nor (spec §9
    gateway rule) when the sensor is displaced or disconnected or the SpO2 or pulse rate is a
    special value (NaN while the sensor searches).
    """
    status = sample.measurement_status
    if status is not None and status.questionable_measurement:
        return False
    return not sample.is_unusable and None not in (sample.spo2_value, sample.pulse_rate_value)


@dataclass(slots=True)
class Downsampler:
    """At most one sample per period; periods are counted from the first sample received."""

    period: timedelta
    start: datetime | None = None
    kept_period: int | None = None

    def keep(self, sample: PlxContinuous, received_at: datetime) -> bool:
        if self.start is None:
            self.start = received_at
        index = (received_at - self.start) // self.period
        if index == self.kept_period or not trustworthy(sample):
            return False
        self.kept_period = index
        return True


class PulseOximeterDriver(MeasurementDriver):
    SERVICE = uuids.PULSE_OXIMETER_SERVICE
    MEASUREMENT = uuids.PLX_SPOT_CHECK_MEASUREMENT
    FEATURE = uuids.PLX_FEATURES
    KIND = KIND
    PROFILE_KIND = "pulse-oximeter"
    CATEGORY = "vital-signs"

    def __init__(self, *, continuous_period: float = 60.0, **kwargs: Any) -> None:
        """``continuous_period``: seconds (gateway clock) a kept continuous sample stands for."""
        super().__init__(**kwargs)
        if continuous_period <= 0:
            raise ValueError("continuous_period must be positive")
        self.continuous_period = continuous_period

    @classmethod
    def to_reading(cls, value: Value) -> Reading:
        return reading_from_plx(PlxSpotCheck.decode(value.payload), value)

    @classmethod
    def decode_feature(cls, data: bytes) -> PlxFeatures:
        return PlxFeatures.decode(data)

    async def collect(self, session: Session) -> None:
        """Spot-checks delivered as indicated; the continuous stream downsampled, if offered."""
        activity = asyncio.Event()
        connection = session.connection
        sampler = Downsampler(timedelta(seconds=self.continuous_period))

        async def on_spot_check(payload: bytes) -> None:
            activity.set()
            spot = await _decode(session, self.MEASUREMENT, payload, PlxSpotCheck.decode)
            if spot is not None:
                await session.deliver(
                    session.finish(reading_from_plx(spot, session.value(payload)))
                )

        async def on_continuous(payload: bytes) -> None:
            activity.set()
            received_at = session.clock()  # before any await: samples are judged in order
            characteristic = uuids.PLX_CONTINUOUS_MEASUREMENT
            sample = await _decode(session, characteristic, payload, PlxContinuous.decode)
            if sample is None:
                return
            if not sampler.keep(sample, received_at):
                session.summary.skipped += 1
                return
            value = session.value(payload, received_at)
            await session.deliver(session.finish(reading_from_plx(sample, value)))

        await connection.subscribe(self.MEASUREMENT, on_spot_check)
        if connection.has(uuids.PLX_CONTINUOUS_MEASUREMENT):
            await connection.subscribe(uuids.PLX_CONTINUOUS_MEASUREMENT, on_continuous)
        await self._wait_until_done(connection, activity)
        if session.summary.skipped:
            log.debug("dropped %d continuous sample(s) by downsampling", session.summary.skipped)


async def _decode(
    session: Session, characteristic: str, payload: bytes, decode: Callable[[bytes], _Decoded]
) -> _Decoded | None:
    """The decoded value, or None once a malformed one was reported (and is then confirmed)."""
    try:
        return decode(payload)
    except DecodeError as exc:
        await session.malformed(characteristic, payload, exc)
        return None
