"""What a profile service with its own conversation plugs into ``EmulatedDevice``.

Plain indicated profiles (weight, blood pressure, temperature) are served by ``EmulatedDevice``
itself. Profiles whose data flows through control points or several characteristics (GLS and
CGMS record access, PLXS spot-check + continuous streams) bring a server object instead; the
device adds its characteristics to the profile service, secures them, and tells it when the link
drops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from bumble.device import Device
from bumble.gatt import Characteristic

from firmware_profiles import FirmwareProfile


class ProfileServer(Protocol):
    delivered: set[int]
    """Indexes of the readings the gateway has got for sure (confirmed, or in a completed
    record-access procedure)."""

    answered: int
    """Control-point requests answered with success on the current connection: a collector that
    synchronised with the device (the device may then sleep once the link drops)."""

    on_complete: Callable[[], None]
    """Called by the server whenever ``delivered`` grew."""

    @property
    def total(self) -> int:
        """How many readings the device holds or will take, in all."""
        ...

    def characteristics(self) -> list[Characteristic[bytes]]:
        """The profile service's characteristics, feature included."""
        ...

    def bind(self, device: Device, *, encrypted: bool, authenticated: bool) -> None:
        """After ``add_services``: keep the device, demand the security the profile says on the
        characteristics that carry readings (their CCCDs and control points)."""
        ...

    def on_disconnection(self) -> None:
        """Stop whatever runs for the link that dropped."""
        ...


ServerFactory = Callable[[FirmwareProfile], ProfileServer]
"""Builds the server from a profile (its ``emulation`` holds the readings)."""
