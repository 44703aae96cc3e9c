"""BLE access behind one interface (``Link``) with swappable backends (bleak, bumble)."""

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

__all__ = [
    "Advertisement",
    "AttError",
    "CharacteristicNotFound",
    "GattConnection",
    "Link",
    "LinkError",
    "NotificationHandler",
    "PairingError",
    "PairingPolicy",
    "normalize_uuid",
]
