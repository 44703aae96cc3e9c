"""Fast JSON (orjson) that writes ``Decimal`` exactly: 65.700 stays 65.700 on the wire."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import orjson

from drivers.models import ClockCheck, DeviceIdentity, Reading

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
