"""``Link`` backend on bleak, for real radios (BlueZ on Linux, CoreBluetooth, WinRT).

BlueZ confirms indications itself on receipt, before our handler has stored the reading, so a
crash between the two can lose a reading the device believes delivered; keep the handler's commit
short (the outbox commits one reading per indication) and prefer the bumble backend with a USB
controller where that window matters.

Pairing goes through BlueZ (which keeps the bonds); devices that display a passkey are answered by
the gateway's own BlueZ agent (``bluez_agent``), registered while the link is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from gateway.link.base import (
    Advertisement,
    CharacteristicNotFound,
    GattConnection,
    Link,
    LinkError,
    NotificationHandler,
    PairingError,
    PairingPolicy,
    normalize_uuid,
)

log = logging.getLogger(__name__)


def _bleak() -> Any:
    try:
        import bleak
    except ImportError as exc:  # pragma: no cover - bleak is a declared dependency
        raise LinkError("bleak is not installed") from exc
    return bleak


class BleakConnection(GattConnection):
    def __init__(self, client: Any, address: str) -> None:
        self._client = client
        self.address = address
        self._chars: dict[str, Any] = {}
        self._disconnected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._secured = False

    def on_disconnect(self) -> None:
        self._disconnected.set()

    async def discover(self) -> frozenset[str]:
        for service in self._client.services:
            for characteristic in service.characteristics:
                self._chars.setdefault(normalize_uuid(characteristic.uuid), characteristic)
        return frozenset(self._chars)

    def has(self, uuid: str) -> bool:
        return normalize_uuid(uuid) in self._chars

    def _get(self, uuid: str) -> Any:
        try:
            return self._chars[normalize_uuid(uuid)]
        except KeyError:
            raise CharacteristicNotFound(normalize_uuid(uuid)) from None

    async def read(self, uuid: str) -> bytes:
        try:
            return bytes(await self._client.read_gatt_char(self._get(uuid)))
        except (_bleak().BleakError, TimeoutError, OSError) as exc:
            raise LinkError(f"read {normalize_uuid(uuid)} failed: {exc}") from exc

    async def write(self, uuid: str, data: bytes, *, response: bool = True) -> None:
        try:
            await self._client.write_gatt_char(self._get(uuid), data, response=response)
        except (_bleak().BleakError, TimeoutError, OSError) as exc:
            raise LinkError(f"write {normalize_uuid(uuid)} failed: {exc}") from exc

    async def subscribe(self, uuid: str, handler: NotificationHandler) -> None:
        characteristic = self._get(uuid)

        def callback(_char: Any, data: bytearray) -> None:
            task = asyncio.get_running_loop().create_task(handler(bytes(data)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        try:
            await self._client.start_notify(characteristic, callback)
        except (_bleak().BleakError, TimeoutError, OSError) as exc:
            raise LinkError(f"subscribe {normalize_uuid(uuid)} failed: {exc}") from exc

    async def unsubscribe(self, uuid: str) -> None:
        with contextlib.suppress(Exception):
            await self._client.stop_notify(self._get(uuid))

    async def secure(self) -> bool:
        """Pair through BlueZ; it returns at once for a device it is already bonded with."""
        if self._secured:
            return False
        try:
            await self._client.pair()
        except (_bleak().BleakError, TimeoutError, OSError, NotImplementedError) as exc:
            raise PairingError(f"pairing with {self.address} failed: {exc}") from exc
        self._secured = True
        return True

    @property
    def is_encrypted(self) -> bool:
        return self._secured

    async def disconnect(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        with contextlib.suppress(Exception):
            await self._client.disconnect()
        self._disconnected.set()

    @property
    def is_connected(self) -> bool:
        return bool(self._client.is_connected) and not self._disconnected.is_set()

    async def wait_disconnected(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._disconnected.wait(), timeout)
        except TimeoutError:
            return False
        return True


class BleakLink(Link):
    """Central role through bleak on the host's Bluetooth adapter (``adapter`` e.g. "hci0")."""

    def __init__(self, *, adapter: str | None = None, pairing: PairingPolicy | None = None) -> None:
        self.adapter = adapter
        self.pairing = pairing or PairingPolicy()
        self._agent: Any = None

    def _kwargs(self) -> dict[str, Any]:
        return {"adapter": self.adapter} if self.adapter else {}

    async def open(self) -> None:
        _bleak()
        if self.pairing.passkeys:
            from gateway.link.bluez_agent import AgentRegistration

            self._agent = AgentRegistration(self.pairing)
            await self._agent.register()

    async def close(self) -> None:
        if self._agent is not None:
            await self._agent.unregister()
            self._agent = None

    async def scan(self, timeout: float, service_uuids: Sequence[str] = ()) -> list[Advertisement]:
        bleak = _bleak()
        wanted = {normalize_uuid(u) for u in service_uuids}
        try:
            found = await bleak.BleakScanner.discover(
                timeout=timeout, return_adv=True, **self._kwargs()
            )
        except (bleak.BleakError, OSError, FileNotFoundError) as exc:
            raise LinkError(f"scan failed (is a Bluetooth adapter present?): {exc}") from exc
        out = []
        for device, adv in found.values():
            uuids = tuple(normalize_uuid(u) for u in adv.service_uuids)
            if wanted and not wanted.intersection(uuids):
                continue
            out.append(
                Advertisement(
                    address=device.address,
                    name=adv.local_name,
                    service_uuids=uuids,
                    rssi=adv.rssi,
                    service_data={normalize_uuid(k): bytes(v) for k, v in adv.service_data.items()},
                )
            )
        return out

    async def connect(self, address: str, timeout: float = 10.0) -> GattConnection:
        bleak = _bleak()
        holder: list[BleakConnection] = []

        def on_disconnect(_client: Any) -> None:
            if holder:
                holder[0].on_disconnect()

        client = bleak.BleakClient(
            address, timeout=timeout, disconnected_callback=on_disconnect, **self._kwargs()
        )
        try:
            await client.connect()
        except (bleak.BleakError, TimeoutError, OSError) as exc:
            raise LinkError(f"connect to {address} failed: {exc}") from exc
        connection = BleakConnection(client, address)
        holder.append(connection)
        return connection
