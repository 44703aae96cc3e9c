"""The one error a codec raises: bytes that do not match the characteristic's layout."""

from __future__ import annotations


class DecodeError(ValueError):
    """Malformed characteristic value.

    Carries what a person needs to find the fault in a capture: which characteristic, which
    field, at which byte offset. The payload is kept as an attribute (for quarantine) and is
    deliberately left out of the message, because messages end up in logs and the bytes are
    health values.
    """

    def __init__(
        self, characteristic: str, field: str, offset: int, reason: str, payload: bytes = b""
    ) -> None:
        self.characteristic = characteristic
        self.field = field
        self.offset = offset
        self.reason = reason
        self.payload_hex = payload.hex()
        super().__init__(f"{characteristic}: field '{field}' at offset {offset}: {reason}")
