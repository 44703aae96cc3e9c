"""Fast JSON (orjson) that writes ``Decimal`` exactly: 65.700 stays 65.700 on the wire."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import orjson

from drivers.models import Reading


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj).encode())
    if isinstance(obj, Enum):
        return obj.value
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default)


def reading_to_dict(reading: Reading) -> dict[str, Any]:
    """Everything a reading carries, JSON-ready (times as ISO text, decimals exact)."""
    data = asdict(reading)
    for key in ("device_time", "effective_time", "received_at"):
        value = data[key]
        data[key] = value.isoformat() if isinstance(value, datetime) else None
    data["key"] = reading.key
    return data


def reading_to_json(reading: Reading) -> bytes:
    return dumps(reading_to_dict(reading))
