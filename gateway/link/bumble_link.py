"""``Link`` backend on bumble: a full BLE host stack in Python.

It drives either a virtual controller on an in-process ``LocalLink`` (emulated devices, tests, the
demo) or any controller reachable through a bumble HCI transport (``tcp-client:HOST:PORT`` to an
``edge emulate`` radio in another process, ``usb:0`` for a dongle).

Unlike BlueZ, bumble lets us confirm an indication *after* the reading is durably stored: the ATT
confirmation is sent only when the handler returns, so a crash before the commit leaves the record
on the device, which sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from bumble import att, core, hci
from bumble.controller import Controller
from bumble.device import Connection, Device, Peer
from bumble.gatt import Characteristic
from bumble.host import Host
from bumble.keys import JsonKeyStore
from bumble.link import LocalLink
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink

from gateway.link.base import (
    Advertisement,
    AttError,
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

_TRANSIENT = (core.BaseBumbleError, asyncio.TimeoutError, ConnectionError, OSError)


def _uuid_text(uuid: core.UUID) -> str:
    """bumble UUID -> our canonical text ("2A9D", or 128-bit lower-case with dashes)."""
    digits = uuid.to_hex_str()
    if len(digits) == 4:
        return digits.upper()
    d = digits.lower()
    return normalize_uuid(f"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}")


def _failed(operation: str, exc: BaseException) -> LinkError:
    """Our error for a bumble failure, keeping the ATT error code when there is one."""
    if isinstance(exc, att.ATT_Error):
        return AttError(operation, int(exc.error_code))
    return LinkError(f"{operation} failed: {exc}")


class _PasskeyEntry(PairingDelegate):
    """The gateway types the passkey the device displays (keyboard-only I/O capability)."""

    def __init__(self, passkey: int) -> None:
        super().__init__(io_capability=PairingDelegate.KEYBOARD_INPUT_ONLY)
        self._passkey = passkey

    async def get_number(self) -> int | None:
        return self._passkey


def pairing_config(passkey: int | None) -> PairingConfig:
    """LE Secure Connections with bonding: passkey entry when one is known, else Just Works.

    The identity address is the static random one the gateway connects with, so that a bond made
    here is found again under the same address on the next connection (by either side).
    """
    return PairingConfig(
        sc=True,
        mitm=passkey is not None,
        bonding=True,
        delegate=PairingDelegate() if passkey is None else _PasskeyEntry(passkey),
        identity_address_type=PairingConfig.AddressType.RANDOM,
    )


@contextlib.contextmanager
def _link_errors(operation: str, error: type[LinkError] = LinkError) -> Iterator[None]:
    """Every bumble failure of ``operation`` as our error type.

    bumble cancels an operation in flight when the link drops; unless our own task is being
    cancelled, that is a lost connection, not a cancellation to pass up.
    """
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise error(f"{operation} failed: the connection was lost") from None
    except (att.ATT_Error, hci.HCI_Error, *_TRANSIENT) as exc:
        if error is LinkError:
            raise _failed(operation, exc) from exc
        raise error(f"{operation} failed: {exc}") from exc


def new_local_link() -> LocalLink:
    """An in-process virtual radio (bumble's constructor is untyped)."""
    return LocalLink()  # type: ignore[no-untyped-call]


class BumbleConnection(GattConnection):
    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._device: Device = connection.device
        self._peer = Peer(connection)
        self.address = str(connection.peer_address).split("/")[0]
        self._characteristics: dict[str, Any] = {}
        self._disconnected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
        self._install_deferred_confirmation()

    def _on_disconnection(self, *_: object) -> None:
        self._disconnected.set()

    def _install_deferred_confirmation(self) -> None:
        """Route indications through our handlers and confirm only once they return."""
        client = self._connection.gatt_client

        def on_indication(indication: att.ATT_Handle_Value_Indication) -> None:
            handlers = client.indication_subscribers.get(indication.attribute_handle, set())
            task = asyncio.get_running_loop().create_task(
                self._deliver_then_confirm(client, handlers, indication.attribute_value)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        # bumble confirms inside this method; replacing it is how we defer the confirmation
        client.on_att_handle_value_indication = on_indication  # type: ignore[method-assign]

    async def _deliver_then_confirm(self, client: Any, handlers: set[Any], value: bytes) -> None:
        try:
            for handler in list(handlers):
                if not callable(handler):  # bumble also registers the proxy itself for events
                    handler.emit(handler.EVENT_UPDATE, value)
                    continue
                result = handler(value)
                if asyncio.iscoroutine(result):
                    await result
        except Exception:
            log.warning("indication handler failed; not confirming, the device keeps the record")
            log.debug("handler failure", exc_info=True)
            return
        if not self._disconnected.is_set():
            client.send_confirmation(att.ATT_Handle_Value_Confirmation())

    async def discover(self) -> frozenset[str]:
        with _link_errors("discovery"):
            await self._peer.discover_services()
            for service in self._peer.services:
                await self._peer.discover_characteristics(service=service)
                for characteristic in service.characteristics:
                    await self._peer.discover_descriptors(characteristic=characteristic)
                    uuid = _uuid_text(characteristic.uuid)
                    self._characteristics.setdefault(uuid, characteristic)
        return frozenset(self._characteristics)

    def has(self, uuid: str) -> bool:
        return normalize_uuid(uuid) in self._characteristics

    def _get(self, uuid: str) -> Any:
        try:
            return self._characteristics[normalize_uuid(uuid)]
        except KeyError:
            raise CharacteristicNotFound(normalize_uuid(uuid)) from None

    async def read(self, uuid: str) -> bytes:
        characteristic = self._get(uuid)
        with _link_errors(f"read {normalize_uuid(uuid)}"):
            return bytes(await self._peer.read_value(characteristic))

    async def write(self, uuid: str, data: bytes, *, response: bool = True) -> None:
        characteristic = self._get(uuid)
        with _link_errors(f"write {normalize_uuid(uuid)}"):
            await self._peer.write_value(characteristic, data, with_response=response)

    async def subscribe(self, uuid: str, handler: NotificationHandler) -> None:
        characteristic = self._get(uuid)

        def on_value(value: bytes) -> None:
            # Notifications only: indications are routed by _install_deferred_confirmation.
            task = asyncio.get_running_loop().create_task(handler(bytes(value)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        async def on_indicated(value: bytes) -> None:
            await handler(bytes(value))

        indicate = bool(characteristic.properties & Characteristic.Properties.INDICATE)
        with _link_errors(f"subscribe {normalize_uuid(uuid)}"):
            await self._peer.subscribe(
                characteristic, on_indicated if indicate else on_value, prefer_notify=not indicate
            )

    async def unsubscribe(self, uuid: str) -> None:
        characteristic = self._get(uuid)
        with contextlib.suppress(*_TRANSIENT):
            await self._peer.unsubscribe(characteristic)

    async def secure(self) -> bool:
        if self._connection.is_encrypted:
            return False
        keystore = self._device.keystore
        if keystore is not None and await keystore.get(str(self._connection.peer_address)):
            try:
                with _link_errors("encryption with the stored bond", PairingError):
                    await self._connection.encrypt()
                return False
            except PairingError as exc:
                if not self.is_connected:
                    raise
                # The device forgot us (reset, battery change): pair again, as phones do.
                log.warning("stored bond refused by the device; pairing again")
                log.debug("encryption with the stored bond failed: %s", exc)
                await keystore.delete(str(self._connection.peer_address))
        with _link_errors(f"pairing with {self.address}", PairingError):
            await self._connection.pair()
        if not self._connection.is_encrypted:
            raise PairingError(f"pairing with {self.address} did not encrypt the link")
        return True

    @property
    def is_encrypted(self) -> bool:
        return bool(self._connection.is_encrypted)

    async def disconnect(self) -> None:
        # Let readings already received finish their durable commit (and confirmation) first.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        if self._disconnected.is_set():
            return
        with contextlib.suppress(*_TRANSIENT):
            await self._connection.disconnect()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._disconnected.wait(), 5.0)
        for task in list(self._tasks):
            task.cancel()

    @property
    def is_connected(self) -> bool:
        return not self._disconnected.is_set()

    async def wait_disconnected(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._disconnected.wait(), timeout)
        except TimeoutError:
            return False
        return True


class BumbleLink(Link):
    """Central role on a bumble host.

    Give either ``local_link`` (in-process virtual radio shared with emulated devices) or
    ``transport`` (a bumble HCI transport spec).
    """

    def __init__(
        self,
        *,
        transport: str | None = None,
        local_link: LocalLink | None = None,
        address: str = "F0:ED:6E:00:00:01",
        pairing: PairingPolicy | None = None,
    ) -> None:
        if (transport is None) == (local_link is None):
            raise ValueError("give exactly one of transport or local_link")
        self.pairing = pairing or PairingPolicy()
        self._transport_spec = transport
        self._local_link = local_link
        self._address = address
        self._transport: Any = None
        self._controller: Controller | None = None
        self.device: Device | None = None

    async def open(self) -> None:
        address = hci.Address(self._address)
        if self._local_link is not None:
            self._controller = Controller(
                "edge-gateway", link=self._local_link, public_address=self._address
            )
            host = Host(self._controller, AsyncPipeSink(self._controller))
            self.device = Device(name="edge", address=address, host=host)
        else:
            assert self._transport_spec is not None
            try:
                self._transport = await open_transport(self._transport_spec)
            except Exception as exc:  # bumble raises a variety of errors for a bad spec
                raise LinkError(
                    f"cannot open HCI transport {self._transport_spec!r}: {exc}"
                ) from exc
            self.device = Device.with_hci(
                "edge", address, self._transport.source, self._transport.sink
            )
        self._configure_pairing(self.device)
        try:
            await asyncio.wait_for(self.device.power_on(), 10.0)
        except (TimeoutError, *_TRANSIENT) as exc:
            raise LinkError(f"controller did not power on: {exc}") from exc

    def _configure_pairing(self, device: Device) -> None:
        bonds = self.pairing.bonds
        if bonds is not None:
            bonds.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            device.keystore = JsonKeyStore(None, str(bonds))

            def restrict() -> None:  # long-term keys: readable by the gateway's user only
                with contextlib.suppress(OSError):
                    bonds.chmod(0o600)

            device.on(device.EVENT_KEY_STORE_UPDATE, restrict)

        def config_for(connection: Connection) -> PairingConfig:
            address = str(connection.peer_address).split("/")[0]
            return pairing_config(self.pairing.passkey_for(address))

        device.pairing_config_factory = config_for

    async def close(self) -> None:
        if self.device is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.device.power_off(), 2.0)
        if self._transport is not None:
            with contextlib.suppress(Exception):
                await self._transport.close()
        if self._controller is not None and self._local_link is not None:
            self._local_link.remove_controller(self._controller)
        self.device = None

    def _require_device(self) -> Device:
        if self.device is None:
            raise LinkError("link is not open")
        return self.device

    async def scan(self, timeout: float, service_uuids: Sequence[str] = ()) -> list[Advertisement]:
        device = self._require_device()
        wanted = {normalize_uuid(u) for u in service_uuids}
        found: dict[str, Advertisement] = {}

        def on_advertisement(adv: Any) -> None:
            lists = adv.data.get_all(
                core.AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS
            ) + adv.data.get_all(core.AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS)
            uuids = tuple(
                dict.fromkeys(
                    _uuid_text(u)
                    for entry in lists
                    for u in (entry if isinstance(entry, list) else [entry])
                )
            )
            if wanted and not wanted.intersection(uuids):
                return
            name = adv.data.get(core.AdvertisingData.COMPLETE_LOCAL_NAME) or adv.data.get(
                core.AdvertisingData.SHORTENED_LOCAL_NAME
            )
            address = str(adv.address).split("/")[0]
            found[address] = Advertisement(
                address=address,
                name=name if isinstance(name, str) else None,
                service_uuids=uuids,
                rssi=adv.rssi,
                connectable=bool(adv.is_connectable),
            )

        device.on(device.EVENT_ADVERTISEMENT, on_advertisement)
        try:
            await device.start_scanning(filter_duplicates=False)
            await asyncio.sleep(timeout)
        finally:
            device.remove_listener(device.EVENT_ADVERTISEMENT, on_advertisement)
            with contextlib.suppress(*_TRANSIENT):
                await device.stop_scanning()
        return list(found.values())

    async def connect(self, address: str, timeout: float = 10.0) -> GattConnection:
        device = self._require_device()
        try:
            connection = await device.connect(
                hci.Address(address, hci.Address.RANDOM_DEVICE_ADDRESS), timeout=timeout
            )
        except (TimeoutError, *_TRANSIENT) as exc:
            raise LinkError(f"connect to {address} failed: {exc}") from exc
        return BumbleConnection(connection)
