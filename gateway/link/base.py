"""The ``Link`` interface drivers talk to; backends live in sibling modules.

Drivers never see bleak or bumble. UUIDs cross this interface normalised: SIG 16-bit UUIDs as four
upper-case hex digits ("2A9D"), anything else as the lower-case 128-bit text.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError

_SIG_BASE_SUFFIX = "-0000-1000-8000-00805f9b34fb"

NotificationHandler = Callable[[bytes], Coroutine[Any, Any, None]]
"""Called once per notification or indication value.

For an indication the backend confirms it to the device only after the handler returned, where the
stack allows it (bumble does; BlueZ confirms by itself on receipt). A handler that raises leaves the
indication unconfirmed, so the device keeps the record and sends it again next time.
"""


def normalize_uuid(uuid: str | int) -> str:
    """Return the canonical text of a UUID given as int, "0x2A9D", "2a9d" or 128-bit text."""
    if isinstance(uuid, int):
        return f"{uuid:04X}"
    text = uuid.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    if len(text) == 4:
        return text.upper()
    if len(text) == 36 and text.startswith("0000") and text.endswith(_SIG_BASE_SUFFIX):
        return text[4:8].upper()
    return text


class LinkError(GatewayError):
    """A BLE operation failed (connection lost, timeout, ATT error...)."""


class AttError(LinkError):
    """The device answered an operation with an ATT error (e.g. 0x05/0x0F: pair first)."""

    INSUFFICIENT_AUTHENTICATION = 0x05
    INSUFFICIENT_ENCRYPTION = 0x0F
    CCCD_IMPROPERLY_CONFIGURED = 0xFD
    PROCEDURE_ALREADY_IN_PROGRESS = 0xFE

    def __init__(self, operation: str, code: int) -> None:
        self.code = code
        super().__init__(f"{operation} failed: ATT error 0x{code:02X}")

    @property
    def needs_security(self) -> bool:
        return self.code in (self.INSUFFICIENT_AUTHENTICATION, self.INSUFFICIENT_ENCRYPTION)


class PairingError(LinkError):
    """Pairing or encryption with a device failed (wrong passkey, device refused, bond lost)."""


class CharacteristicNotFound(LinkError):
    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        super().__init__(f"characteristic {uuid} not found on the device")


@dataclass(frozen=True, slots=True)
class Advertisement:
    address: str
    name: str | None = None
    service_uuids: tuple[str, ...] = ()
    rssi: int | None = None
    connectable: bool = True
    service_data: dict[str, bytes] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class PairingPolicy:
    """How the gateway pairs with devices that require an encrypted link (glucose meters, CGMs).

    Always LE Secure Connections with bonding. A device whose address has a passkey here pairs by
    passkey entry (the gateway types what the device displays, which authenticates the link);
    any other device pairs Just Works. Bonds outlive the process: the bumble backend keeps them in
    ``bonds`` (a JSON key store), BlueZ keeps its own for the bleak backend.
    """

    bonds: Path | None = None
    passkeys: Mapping[str, int] = field(default_factory=dict)

    def passkey_for(self, address: str) -> int | None:
        wanted = address.upper()
        for known, passkey in self.passkeys.items():
            if known.upper() == wanted:
                return passkey
        return None


class GattConnection(abc.ABC):
    """One connection to one peripheral."""

    address: str

    @abc.abstractmethod
    async def discover(self) -> frozenset[str]:
        """Discover services and characteristics; returns every characteristic UUID found."""

    @abc.abstractmethod
    def has(self, uuid: str) -> bool:
        """Whether discovery found the characteristic."""

    @abc.abstractmethod
    async def read(self, uuid: str) -> bytes: ...

    @abc.abstractmethod
    async def write(self, uuid: str, data: bytes, *, response: bool = True) -> None: ...

    @abc.abstractmethod
    async def subscribe(self, uuid: str, handler: NotificationHandler) -> None:
        """Enable indications (preferred when offered) or notifications, and route them."""

    @abc.abstractmethod
    async def unsubscribe(self, uuid: str) -> None: ...

    @abc.abstractmethod
    async def secure(self) -> bool:
        """Encrypt the link before touching protected characteristics.

        Reuses the bond when there is one, else pairs per the link's ``PairingPolicy`` and bonds.
        Returns True when a new bond was made. Raises ``PairingError``.
        """

    @property
    @abc.abstractmethod
    def is_encrypted(self) -> bool: ...

    @abc.abstractmethod
    async def disconnect(self) -> None: ...

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @abc.abstractmethod
    async def wait_disconnected(self, timeout: float | None = None) -> bool:
        """Wait until the peer goes away; True if it did within ``timeout``."""


class Link(abc.ABC):
    """A radio (or a virtual one): scan and connect."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def scan(self, timeout: float, service_uuids: Sequence[str] = ()) -> list[Advertisement]:
        """Listen for ``timeout`` seconds; keep advertisers offering one of ``service_uuids``."""

    @abc.abstractmethod
    async def connect(self, address: str, timeout: float = 10.0) -> GattConnection: ...

    async def __aenter__(self) -> Link:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
