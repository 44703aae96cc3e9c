"""The gateway's own identity (PHG EUI-64) and clock zone, kept stable across restarts."""

from __future__ import annotations

import os
import secrets
from datetime import datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.errors import ConfigError


def gateway_system_id(data_dir: Path) -> str:
    """EUI-64 of this gateway: random, locally administered, created once in ``gateway-id``."""
    path = data_dir / "gateway-id"
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # health data lives there
    raw = bytearray(secrets.token_bytes(8))
    raw[0] = (raw[0] | 0x02) & 0xFE  # locally administered, unicast
    value = raw.hex().upper()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n", encoding="ascii")
    os.replace(tmp, path)
    return value


def local_zone(name: str | None) -> tzinfo:
    """The zone device wall clocks are read in: the configured IANA zone or the host's."""
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"gateway.timezone: unknown time zone {name!r}") from exc
    env = os.environ.get("TZ")
    if env:
        try:
            return ZoneInfo(env.lstrip(":"))
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            return ZoneInfo(target.split("zoneinfo/", 1)[1])
    except (OSError, ZoneInfoNotFoundError, ValueError):
        pass
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone
