"""The BlueZ pairing agent, called over a real D-Bus (a private dbus-daemon started by the test).

BlueZ itself cannot run here (no radio); what BlueZ would do is call the agent's methods over
D-Bus, which is exactly what these tests do.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from dbus_fast import DBusError
from dbus_fast.aio import MessageBus

from gateway.link import PairingPolicy
from gateway.link.bluez_agent import AGENT_PATH, REJECTED, PasskeyAgent, address_from_path

METER = "C0:ED:6E:00:00:07"
METER_PATH = "/org/bluez/hci0/dev_C0_ED_6E_00_00_07"


@pytest.fixture
def bus_address() -> Iterator[str]:
    daemon = shutil.which("dbus-daemon")
    assert daemon, "make test installs dbus-daemon (Debian package dbus-daemon)"
    process = subprocess.Popen(
        [daemon, "--session", "--nofork", "--print-address"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
async def agent_proxy(bus_address: str) -> AsyncIterator[tuple[PasskeyAgent, Any]]:
    server = await MessageBus(bus_address=bus_address).connect()
    agent = PasskeyAgent(PairingPolicy(passkeys={METER.lower(): 472913}))
    server.export(AGENT_PATH, agent)
    client = await MessageBus(bus_address=bus_address).connect()
    assert server.unique_name is not None
    introspection = await client.introspect(server.unique_name, AGENT_PATH)
    proxy = client.get_proxy_object(server.unique_name, AGENT_PATH, introspection)
    try:
        yield agent, proxy.get_interface("org.bluez.Agent1")
    finally:
        client.disconnect()
        server.disconnect()


def test_device_paths_give_addresses():
    assert address_from_path(METER_PATH) == METER
    assert address_from_path("/org/bluez/hci0") is None


async def test_the_configured_passkey_is_typed_for_that_device(agent_proxy):
    agent, bluez = agent_proxy
    assert await bluez.call_request_passkey(METER_PATH) == 472913
    assert agent.answered == [METER]


async def test_an_unknown_device_gets_no_passkey(agent_proxy):
    _agent, bluez = agent_proxy
    with pytest.raises(DBusError) as refused:
        await bluez.call_request_passkey("/org/bluez/hci0/dev_C0_ED_6E_00_00_99")
    assert refused.value.type == REJECTED


async def test_numeric_comparison_and_pin_codes_are_refused(agent_proxy):
    _agent, bluez = agent_proxy
    with pytest.raises(DBusError) as compared:
        await bluez.call_request_confirmation(METER_PATH, 123456)
    with pytest.raises(DBusError) as pin:
        await bluez.call_request_pin_code(METER_PATH)
    assert compared.value.type == pin.value.type == REJECTED


async def test_just_works_is_authorised(agent_proxy):
    agent, bluez = agent_proxy
    # a D-Bus error reply (a refusal) would raise DBusError here; an empty reply authorises
    assert await bluez.call_request_authorization(METER_PATH) is None
    uuid = "00001808-0000-1000-8000-00805f9b34fb"
    assert await bluez.call_authorize_service(METER_PATH, uuid) is None
    assert await bluez.call_cancel() is None
    assert agent.answered == []  # no passkey was handed out along the way
