"""What a driver needs from its host and hands back, independent of any BLE stack."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from drivers.codecs.errors import DecodeError
from drivers.models import DeviceIdentity, Reading


class ReadingSink(Protocol):
    """Where a driver delivers. ``on_reading`` must have stored the reading durably on return:
    the driver's link confirms the indication to the device only after that."""

    async def on_reading(self, reading: Reading) -> None: ...

    async def on_readings(self, readings: Sequence[Reading]) -> None:
        """Several readings at once (a record download), all durable on return; lets the sink
        map one reading while the previous ones are being written."""
        ...

    async def on_malformed(
        self, device: DeviceIdentity, characteristic: str, payload: bytes, error: DecodeError
    ) -> None: ...

    async def load_cursor(self, device: DeviceIdentity, stream: str) -> int | None:
        """Where the last download from a record-access device (GLS, CGMS) stopped, if any."""
        ...

    async def save_cursor(self, device: DeviceIdentity, stream: str, value: int) -> None:
        """Remember the next record to ask for; called only once the records before it were
        stored durably, so a crash costs a re-download (deduplicated), never a lost record."""
        ...
