"""A BlueZ pairing agent (``org.bluez.Agent1``) answering from the gateway's ``PairingPolicy``.

BlueZ asks the registered agent for the passkey a device displays; without an agent, bleak can only
pair Just Works. This agent types the configured passkey for the device that asks, and rejects
every request it has no answer for (unknown device, PIN codes, numeric comparison), so a device can
never end up bonded to the gateway by accident. Just Works requests are authorised: whether a device
needs a passkey is the device's decision, and the policy lists the ones that do.

No ``from __future__ import annotations`` here: dbus-fast reads the D-Bus signatures from the
runtime annotations.
"""

import logging
import re
import sys
from typing import Any

from dbus_fast import BusType, DBusError
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusStr, DBusUInt16, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from gateway.link.base import PairingError, PairingPolicy

log = logging.getLogger(__name__)

AGENT_PATH = "/org/edge/pairing_agent"
CAPABILITY = "KeyboardOnly"  # a headless gateway can type a passkey, it cannot show one
REJECTED = "org.bluez.Error.Rejected"
_DEVICE_PATH = re.compile(r"/dev_([0-9A-Fa-f]{2}(?:_[0-9A-Fa-f]{2}){5})$")


def address_from_path(path: str) -> str | None:
    """``/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF`` -> ``AA:BB:CC:DD:EE:FF`` (None if not a device)."""
    match = _DEVICE_PATH.search(path)
    return match.group(1).replace("_", ":").upper() if match else None


class PasskeyAgent(ServiceInterface):
    """The D-Bus object BlueZ calls during pairing."""

    def __init__(self, policy: PairingPolicy) -> None:
        super().__init__("org.bluez.Agent1")
        self.policy = policy
        self.answered: list[str] = []  # addresses given a passkey, for diagnostics and tests

    def _reject(self, what: str) -> DBusError:
        log.info("pairing agent rejected a %s request", what)
        return DBusError(REJECTED, f"edge does not answer {what} requests")

    @dbus_method()
    def Release(self) -> None:
        log.debug("pairing agent released by BlueZ")

    @dbus_method()
    def RequestPinCode(self, device: DBusObjectPath) -> DBusStr:
        raise self._reject("PIN code")  # legacy BR/EDR pairing: not a BLE health device

    @dbus_method()
    def DisplayPinCode(self, device: DBusObjectPath, pincode: DBusStr) -> None:
        raise self._reject("PIN display")

    @dbus_method()
    def RequestPasskey(self, device: DBusObjectPath) -> DBusUInt32:
        address = address_from_path(device)
        passkey = self.policy.passkey_for(address) if address else None
        if passkey is None:
            raise self._reject("passkey (no passkey configured for this device)")
        self.answered.append(address or "")
        return passkey

    @dbus_method()
    def DisplayPasskey(
        self, device: DBusObjectPath, passkey: DBusUInt32, entered: DBusUInt16
    ) -> None:
        log.debug("BlueZ asked to display a passkey; this gateway has no display")

    @dbus_method()
    def RequestConfirmation(self, device: DBusObjectPath, passkey: DBusUInt32) -> None:
        # Numeric comparison needs a person looking at both screens; the gateway has none.
        raise self._reject("numeric comparison")

    @dbus_method()
    def RequestAuthorization(self, device: DBusObjectPath) -> None:
        log.debug("Just Works pairing authorised")

    @dbus_method()
    def AuthorizeService(self, device: DBusObjectPath, uuid: DBusStr) -> None:
        return None

    @dbus_method()
    def Cancel(self) -> None:
        log.info("BlueZ cancelled a pairing request")


class AgentRegistration:
    """Export the agent on the system bus and make it BlueZ's default agent (Linux only)."""

    def __init__(self, policy: PairingPolicy, bus_address: str | None = None) -> None:
        self.agent = PasskeyAgent(policy)
        self._bus_address = bus_address
        self._bus: MessageBus | None = None

    async def register(self) -> None:
        if sys.platform != "linux":
            return  # CoreBluetooth and WinRT bring their own pairing UI
        try:
            if self._bus_address:
                bus = MessageBus(bus_address=self._bus_address)
            else:
                bus = MessageBus(bus_type=BusType.SYSTEM)
            self._bus = await bus.connect()
            self._bus.export(AGENT_PATH, self.agent)
            manager = await self._agent_manager(self._bus)
            await manager.call_register_agent(AGENT_PATH, CAPABILITY)
            await manager.call_request_default_agent(AGENT_PATH)
        except (DBusError, OSError, ValueError) as exc:
            await self.unregister()
            raise PairingError(f"cannot register the BlueZ pairing agent: {exc}") from exc

    async def unregister(self) -> None:
        bus, self._bus = self._bus, None
        if bus is None:
            return
        try:
            manager = await self._agent_manager(bus)
            await manager.call_unregister_agent(AGENT_PATH)
        except (DBusError, OSError, ValueError):
            log.debug("BlueZ agent unregistration failed", exc_info=True)
        bus.disconnect()

    @staticmethod
    async def _agent_manager(bus: MessageBus) -> Any:
        introspection = await bus.introspect("org.bluez", "/org/bluez")
        proxy = bus.get_proxy_object("org.bluez", "/org/bluez", introspection)
        return proxy.get_interface("org.bluez.AgentManager1")
