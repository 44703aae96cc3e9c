"""Reads Device Information into a ``DeviceIdentity`` (every field optional, as on real devices)."""

from __future__ import annotations

import logging

from drivers import uuids
from drivers.codecs.device_information import SystemId, decode_dis_string
from drivers.codecs.errors import DecodeError
from drivers.models import DeviceIdentity
from gateway.link.base import GattConnection, LinkError

log = logging.getLogger(__name__)

_STRINGS = {
    "manufacturer": uuids.MANUFACTURER_NAME,
    "model": uuids.MODEL_NUMBER,
    "serial": uuids.SERIAL_NUMBER,
    "firmware": uuids.FIRMWARE_REVISION,
    "hardware": uuids.HARDWARE_REVISION,
    "software": uuids.SOFTWARE_REVISION,
}


_PLACEHOLDER_IDS = frozenset({"0" * 16, "F" * 16})


async def read_identity(connection: GattConnection) -> DeviceIdentity:
    values: dict[str, str | None] = {}
    for field, uuid in _STRINGS.items():
        values[field] = None
        if connection.has(uuid):
            try:
                values[field] = decode_dis_string(await connection.read(uuid), uuid)
            except DecodeError as exc:
                log.warning("ignoring unreadable %s: %s", uuids.NAMES[uuid], exc)
    system_id = None
    if connection.has(uuids.SYSTEM_ID):
        try:
            system_id = SystemId.decode(await connection.read(uuids.SYSTEM_ID)).eui64
        except (DecodeError, LinkError) as exc:
            log.warning("ignoring unreadable System ID: %s", exc)
        if system_id in _PLACEHOLDER_IDS:
            # Some firmwares ship zeros: as an identifier it would merge every such device
            # into one record Device, so fall back to the Bluetooth address.
            system_id = None
    return DeviceIdentity(address=connection.address, system_id=system_id, **values)
