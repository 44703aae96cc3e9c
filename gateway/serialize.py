"""Fast JSON (orjson) that writes ``Decimal`` exactly: 65.700 stays 65.700 on the wire; and a
reading as the outbox keeps it, both ways (a reading attributed later is mapped from it)."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import orjson

from drivers.models import Absent, ClockCheck, DeviceIdentity, Quantity, Reading, TimeSource

_DEVICE_FIELDS = tuple(f.name for f in fields(DeviceIdentity))


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj).encode())
    if isinstance(obj, Enum):
        return obj.value
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def dumps(obj: Any, *, indent: bool = False) -> bytes:
    return orjson.dumps(obj, default=_default, option=orjson.OPT_INDENT_2 if indent else 0)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def reading_to_dict(reading: Reading) -> dict[str, Any]:
    """Everything a reading carries, JSON-ready (times as ISO text, decimals exact).

    Written out by hand: ``dataclasses.asdict`` deep-copies and cost more than the whole mapping.
    """
    return {
        "key": reading.key,
        "kind": reading.kind,
        "characteristic": reading.characteristic,
        "device": {f: getattr(reading.device, f) for f in _DEVICE_FIELDS},
        "quantities": [
            {"name": q.name, "value": q.value, "unit": q.unit, "absent": q.absent}
            for q in reading.quantities
        ],
        "device_time": _iso(reading.device_time),
        "effective_time": _iso(reading.effective_time),
        "time_source": reading.time_source,
        "received_at": _iso(reading.received_at),
        "user_index": reading.user_index,
        "sequence": reading.sequence,
        "flags": reading.flags,
        "raw": reading.raw,
        "site": reading.site,
        "corrections": list(reading.corrections),
        "context": [list(pair) for pair in reading.context],
        "status": list(reading.status),
        "clock": None if reading.clock is None else _clock(reading.clock),
        "battery": reading.battery,
    }


def _clock(clock: ClockCheck) -> dict[str, Any]:
    return {
        "device_time": _iso(clock.device_time),
        "gateway_time": _iso(clock.gateway_time),
        "set_to": _iso(clock.set_to),
    }


def reading_to_json(reading: Reading) -> bytes:
    return dumps(reading_to_dict(reading))


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _number(value: object) -> Decimal | None:
    if value is None:
        return None
    return value if isinstance(value, Decimal) else Decimal(str(value))


def reading_from_json(data: bytes) -> Reading:
    """The reading ``reading_to_json`` wrote, equal to the original (numbers exact: parsed as
    ``Decimal`` from their text). Raises ``ValueError`` (or ``KeyError``/``TypeError``) on
    anything else."""
    d = json.loads(data, parse_float=Decimal)
    clock = d["clock"]
    effective, received = _time(d["effective_time"]), _time(d["received_at"])
    if effective is None or received is None:
        raise ValueError("a stored reading needs its effective and receipt times")
    return Reading(
        kind=d["kind"],
        characteristic=d["characteristic"],
        device=DeviceIdentity(**d["device"]),
        quantities=tuple(
            Quantity(
                name=q["name"],
                value=_number(q["value"]),
                unit=q["unit"],
                absent=None if q["absent"] is None else Absent(q["absent"]),
            )
            for q in d["quantities"]
        ),
        device_time=_time(d["device_time"]),
        effective_time=effective,
        time_source=TimeSource(d["time_source"]),
        received_at=received,
        user_index=d["user_index"],
        raw=d["raw"],
        flags=d["flags"],
        sequence=d["sequence"],
        site=d["site"],
        corrections=tuple(d["corrections"]),
        context=tuple((str(k), str(v)) for k, v in d["context"]),
        status=tuple(d["status"]),
        clock=None
        if clock is None
        else ClockCheck(
            device_time=_time(clock["device_time"]),
            gateway_time=datetime.fromisoformat(clock["gateway_time"]),
            set_to=_time(clock["set_to"]),
        ),
        battery=d["battery"],
    )
