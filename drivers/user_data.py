"""User Data Service on the gateway side: unlock one user's data on a multi-user device.

A UDS scale or monitor keeps one memory per registered user and releases a user's measurements
only after the collector gives that user's consent code (User Control Point "Consent"). The codes
come from the bindings (one per device and user index), so a user the gateway knows nothing about
is never unlocked, and readings of an unbound user stay unattributed: never guessed. One user is
served per connection; a device with several bound users gets them in turn, one a connection
(it keeps advertising while any memory holds readings).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from drivers import uuids
from drivers.codecs.errors import DecodeError
from drivers.codecs.user_data import UcpRequest, UcpResponse, UcpResponseValue
from drivers.models import DeviceIdentity, normalize_device
from gateway.link.base import GattConnection, LinkError

log = logging.getLogger(__name__)

CONSENT_TIMEOUT = 5.0


class UserConsent:
    """Consent codes by device (EUI-64 or address) and user index, and whose turn is next."""

    def __init__(self, codes: Mapping[str, Mapping[int, int]]) -> None:
        self._codes = {normalize_device(device): dict(users) for device, users in codes.items()}
        self._turn: dict[str, int] = {}

    def codes_for(self, identity: DeviceIdentity) -> dict[int, int]:
        for ident in (identity.system_id, identity.address):
            if ident and normalize_device(ident) in self._codes:
                return self._codes[normalize_device(ident)]
        return {}

    def next_user(self, identity: DeviceIdentity) -> tuple[int, int] | None:
        """(user index, consent code) to unlock on this connection, or None if none is bound."""
        codes = self.codes_for(identity)
        if not codes:
            return None
        order = sorted(codes)
        turn = self._turn.get(identity.key, 0)
        self._turn[identity.key] = turn + 1
        index = order[turn % len(order)]
        return index, codes[index]

    async def unlock(self, connection: GattConnection, identity: DeviceIdentity) -> int | None:
        """Give the device the next bound user's consent; the user index it accepted, or None
        (no user bound, or the device refused: it will then release nothing)."""
        chosen = self.next_user(identity)
        if chosen is None:
            log.info("multi-user device %s: no user with a consent code is bound", identity.key)
            return None
        index, code = chosen
        response = await ask(connection, UcpRequest.consent(index, code))
        if not response.succeeded:
            value = response.response_value
            name = value.name if isinstance(value, UcpResponseValue) else f"0x{value:02X}"
            log.warning("device %s refused the consent of user %d (%s)", identity.key, index, name)
            return None
        return index


async def ask(connection: GattConnection, request: UcpRequest) -> UcpResponse:
    """Write one User Control Point request and wait for its response indication."""
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_answer(payload: bytes) -> None:
        answers.put_nowait(payload)

    await connection.subscribe(uuids.USER_CONTROL_POINT, on_answer)
    await connection.write(uuids.USER_CONTROL_POINT, request.encode())
    try:
        return UcpResponse.decode(await asyncio.wait_for(answers.get(), CONSENT_TIMEOUT))
    except TimeoutError:
        raise LinkError("the device did not answer on its User Control Point") from None
    except DecodeError as exc:
        raise LinkError(f"unreadable User Control Point answer: {exc}") from exc


async def register(connection: GattConnection, consent_code: int) -> int:
    """Register a new user on the device with ``consent_code``; the user index it gave.

    The person chooses the 4-digit code; the index and code then go into a binding
    (``user_index``, ``consent_code``) so the gateway can unlock that user's data later.
    """
    if not connection.has(uuids.USER_CONTROL_POINT):
        raise LinkError("the device has no User Control Point (not a multi-user device)")
    response = await ask(connection, UcpRequest.register_new_user(consent_code))
    index = response.registered_user_index
    if index is None:
        value = response.response_value
        name = value.name if isinstance(value, UcpResponseValue) else f"0x{value:02X}"
        raise LinkError(f"the device refused to register a user ({name})")
    return index
