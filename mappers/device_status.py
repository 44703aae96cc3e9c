"""Device status, not patient data: the coincident time stamp and the battery level.

Both Observations have the PhdDevice as ``subject`` (never the patient) and carry their own
conditional-create identifier, so a retry, or every reading of one session repeating them, yields
the same entry and the server keeps one resource. They are appended after the reading's patient
Observations.

**Coincident time stamp** (PhdCoincidentTimeStampObservation, spec §1.9), from ``Reading.clock``:

* ``code`` MDC_ATTR_TIME_ABS 67975: a Current Time Service clock is a wall clock without offset
  (see ``codes.CLOCK_TYPE_WALL_CLOCK`` for why neither 68225 nor 68226 is used);
* ``effectiveDateTime`` = ``ClockCheck.gateway_time``; ``valueDateTime`` = ``device_time`` with
  the gateway's offset: the zone of ``Reading.effective_time`` when the reading's time is the
  device's local clock (``TimeSource.DEVICE_LOCAL``), else UTC. Both at millisecond precision;
* a device time fault (``device_time`` None): no value, ``dataAbsentReason`` ``unknown``;
* ``device`` = the PhgDevice, no ``performer``, no ``derivedFrom``; no ``clockSyncMethod``
  component: ``ClockCheck`` does not say how (or whether) the device clock is synchronised;
* identifier ``<device key>-67975-<gateway time, seconds since 2000 with microseconds>``.
  (PHD gives this profile no identifier, one per connection; here every reading of a session
  carries the same clock check, hence the conditional create.)
* the reading's patient Observations reference it (``CoincidentTimeStampReference`` extension).
* a reading without a device time gets none (PHD case 1: no time stamp in the measurement, no
  coincident time stamp); this also keeps one session's entries identical, since only readings
  that use the device clock carry one.

**Battery** (PhdNumericObservation, MDC_ATTR_VAL_BATT_CHARGE 67996, ``%``), from
``Reading.battery``: ``effectiveDateTime`` = ``Reading.received_at``, identifier
``<device key>-67996-<received_at, seconds since 2000 with microseconds>``, ``device`` and
``subject`` the PhdDevice, PHD category only. ``battery`` must be an int 0..100.
"""

from __future__ import annotations

from datetime import UTC, tzinfo
from decimal import Decimal
from typing import Any

from drivers.models import ClockCheck, Reading, TimeSource
from mappers import codes
from mappers.errors import MappingError
from mappers.resources import (
    absent_reason,
    format_datetime,
    format_datetime_ms,
    mdc_coding,
    observation_entry,
    phd_category,
    seconds_since_2000,
)


def coincident_entry(reading: Reading, device_url: str, gateway_url: str) -> dict[str, Any] | None:
    """The reading's PhdCoincidentTimeStampObservation entry, or None when it needs none."""
    clock = reading.clock
    if clock is None or reading.device_time is None:
        return None
    zone = _device_zone(reading)
    clock_type = codes.CLOCK_TYPE_WALL_CLOCK
    identifier = f"{reading.device.key}-{clock_type.code}-{seconds_since_2000(clock.gateway_time)}"
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"profile": [codes.PHD_COINCIDENT_TIME_STAMP_OBSERVATION_PROFILE]},
        "identifier": [{"system": codes.OBSERVATION_IDENTIFIER_SYSTEM, "value": identifier}],
        "status": "final",
        "code": {"coding": [mdc_coding(clock_type)]},
        "subject": {"reference": device_url},
        "effectiveDateTime": format_datetime_ms(clock.gateway_time),
    }
    resource.update(_device_clock(clock, zone))
    resource["device"] = {"reference": gateway_url}
    return observation_entry(resource)


def _device_zone(reading: Reading) -> tzinfo:
    if reading.time_source is TimeSource.DEVICE_LOCAL:
        zone = reading.effective_time.tzinfo
        if zone is None:
            raise MappingError("effective time has no UTC offset")
        return zone
    return UTC


def _device_clock(clock: ClockCheck, zone: tzinfo) -> dict[str, Any]:
    if clock.device_time is None:
        return {"dataAbsentReason": absent_reason(*codes.UNKNOWN_REASON)}
    if clock.device_time.tzinfo is not None:
        raise MappingError("clock device time must be the naive wall clock as read")
    return {"valueDateTime": format_datetime_ms(clock.device_time.replace(tzinfo=zone))}


def battery_entry(reading: Reading, device_url: str, gateway_url: str) -> dict[str, Any]:
    """The battery level as a device-status PhdNumericObservation entry."""
    level = reading.battery
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 100:
        raise MappingError("battery level must be an integer percentage 0..100")
    term = codes.BATTERY_CHARGE
    identifier = f"{reading.device.key}-{term.code}-{seconds_since_2000(reading.received_at)}"
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"profile": [codes.PHD_NUMERIC_OBSERVATION_PROFILE]},
        "extension": [
            {"url": codes.GATEWAY_DEVICE_EXTENSION, "valueReference": {"reference": gateway_url}}
        ],
        "identifier": [{"system": codes.OBSERVATION_IDENTIFIER_SYSTEM, "value": identifier}],
        "status": "final",
        "category": [phd_category()],
        "code": {"coding": [mdc_coding(term)]},
        "subject": {"reference": device_url},
        "effectiveDateTime": format_datetime(reading.received_at),
        "valueQuantity": {
            "value": Decimal(level),
            "unit": codes.UCUM_DISPLAY["%"],
            "system": codes.UCUM_SYSTEM,
            "code": "%",
        },
        "device": {"reference": device_url},
    }
    return observation_entry(resource)
