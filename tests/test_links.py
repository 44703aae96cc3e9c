"""The Link interface and its two backends."""

from __future__ import annotations

import inspect
import re

import pytest

from gateway.link import LinkError, normalize_uuid
from gateway.link.base import GattConnection, Link
from gateway.link.bleak_link import BleakConnection, BleakLink
from gateway.link.bumble_link import BumbleConnection, BumbleLink


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (0x2A9D, "2A9D"),
        ("0x2a9d", "2A9D"),
        ("2a9d", "2A9D"),
        ("00002a9d-0000-1000-8000-00805f9b34fb", "2A9D"),
        ("6E400001-B5A3-F393-E0A9-E50E24DCCA9E", "6e400001-b5a3-f393-e0a9-e50e24dcca9e"),
    ],
)
def test_uuids_cross_the_interface_in_one_form(given, expected):
    assert normalize_uuid(given) == expected


@pytest.mark.parametrize(
    ("link", "connection"), [(BumbleLink, BumbleConnection), (BleakLink, BleakConnection)]
)
def test_both_backends_implement_the_whole_interface(link, connection):
    assert issubclass(link, Link) and not inspect.isabstract(link)
    assert issubclass(connection, GattConnection) and not inspect.isabstract(connection)


def test_bumble_link_needs_exactly_one_radio():
    with pytest.raises(ValueError, match="exactly one"):
        BumbleLink()


async def test_an_unreachable_hci_transport_is_a_clear_link_error():
    link = BumbleLink(transport="tcp-client:127.0.0.1:9")
    with pytest.raises(LinkError, match=re.escape("tcp-client:127.0.0.1:9")):
        await link.open()


async def test_bleak_without_a_bluetooth_adapter_fails_with_a_link_error():
    # No radio on these machines: what a user sees must be a LinkError, not a stack trace.
    link = BleakLink()
    await link.open()
    with pytest.raises(LinkError, match="scan failed"):
        await link.scan(0.5)
