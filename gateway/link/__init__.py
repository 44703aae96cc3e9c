"""BLE access behind one interface (``Link``) with swappable backends (bleak, bumble)."""

from gateway.link.base import (
    Advertisement,
    CharacteristicNotFound,
    GattConnection,
    Link,
    LinkError,
    NotificationHandler,
    normalize_uuid,
)

__all__ = [
    "Advertisement",
    "CharacteristicNotFound",
    "GattConnection",
    "Link",
    "LinkError",
    "NotificationHandler",
    "normalize_uuid",
]
