"""The Record Access Control Point server every record-keeping sensor shares (GLS, CGMS).

A glucose meter and a CGM sensor answer RACP (0x2A52) the same way: one procedure at a time
(ATT 0xFE otherwise, Abort excepted), indications on the control point first (0xFD otherwise),
records selected by operator over one uint16 filter (GLS sequence number, CGMS time offset: both
filter type 0x01), notified, then an indicated Response Code. Only which records exist and how
the selected ones go on the air differ, so this module holds the conversation once and a profile
server subclasses ``RacpServer`` with ``keys`` and ``send``. The helpers below also serve the
profile's other control points (CGMS SOCP): security on CCCDs and writes, the CCCD check, and
running a procedure as a task that a dropped link ends quietly.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from bumble import att, core
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue

from drivers import uuids
from drivers.codecs.racp import OpCode, Operator, RacpRequest, RacpResponse, ResponseCode

log = logging.getLogger(__name__)

CCCD = core.UUID.from_16_bits(0x2902)
FILTER_UINT16 = 0x01  # GLS sequence number, CGMS time offset
ATT_CCCD_IMPROPERLY_CONFIGURED = 0xFD
ATT_PROCEDURE_ALREADY_IN_PROGRESS = 0xFE


def uuid16(text: str) -> core.UUID:
    """bumble's UUID for a SIG 16-bit UUID written as in ``drivers.uuids``."""
    return core.UUID.from_16_bits(int(text, 16))


def notifying(uuid: str) -> Characteristic[bytes]:
    """A characteristic whose values only go out as notifications (records); reads give none."""
    return Characteristic(
        uuid16(uuid),
        Characteristic.Properties.NOTIFY,
        Characteristic.READABLE,
        CharacteristicValue(read=lambda _connection: b""),
    )


def demand_security(
    device: Device,
    service: str,
    *,
    subscribed: Iterable[Characteristic[bytes]],
    written: Iterable[Characteristic[bytes]] = (),
    read: Iterable[Characteristic[bytes]] = (),
    authenticated: bool,
) -> None:
    """After ``add_services``: an encrypted (and, for passkey devices, authenticated) link for
    subscribing to ``subscribed``, writing ``written`` and reading ``read``, as GLS and CGMS
    sensors demand (nRF5 examples: SEC_JUST_WORKS on CCCDs and control points)."""
    write = att.Attribute.WRITE_REQUIRES_ENCRYPTION
    reading = att.Attribute.READ_REQUIRES_ENCRYPTION
    if authenticated:
        write |= att.Attribute.WRITE_REQUIRES_AUTHENTICATION
        reading |= att.Attribute.READ_REQUIRES_AUTHENTICATION
    for characteristic in written:
        characteristic.permissions |= write
    for characteristic in read:
        characteristic.permissions |= reading
    for characteristic in subscribed:
        descriptor = device.gatt_server.get_descriptor_attribute(
            uuid16(service), characteristic.uuid, CCCD
        )
        assert descriptor is not None, "bumble adds a CCCD to every notifying characteristic"
        descriptor.permissions |= write


def indications_enabled(
    device: Device, connection: Connection, characteristic: Characteristic[bytes]
) -> bool:
    """Whether ``connection`` enabled indications on ``characteristic`` (a control point)."""
    cccds = device.gatt_server.subscribers.get(connection, {})
    return bool(cccds.get(characteristic.handle, b"\x00\x00")[0] & 0x02)


def spawn(work: Awaitable[None]) -> asyncio.Task[None]:
    """Run one procedure as a task: a write handler cannot wait for its own indications."""

    async def run() -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the link went away mid-procedure
            log.debug("emulated procedure ended: %s", exc)

    return asyncio.get_running_loop().create_task(run())


async def indicate(
    device: Device, connection: Connection, characteristic: Characteristic[bytes], value: bytes
) -> None:
    """Indicate a control point's answer; a collector that never confirms only costs a timeout."""
    with contextlib.suppress(asyncio.TimeoutError):
        await device.indicate_subscriber(connection, characteristic, value)


class RacpServer(abc.ABC):
    """Stored records by uint16 key, and the RACP conversation that hands them out.

    ``delivered`` holds the keys (or, through ``mark_delivered``, the reading indexes) sent in a
    procedure that completed with Success; ``procedures`` every request received, for tests.
    """

    def __init__(self, *, pace: float = 0.0) -> None:
        self.pace = pace  # seconds between records (0: as fast as the link goes)
        self.delivered: set[int] = set()
        self.procedures: list[bytes] = []
        self.answered = 0  # requests answered with success in the current connection
        self.on_complete: Callable[[], None] = lambda: None
        # Whether records may be handed out now; a model that wants its clock set first (a
        # firmware-profile quirk) answers "procedure not completed" until then.
        self.ready: Callable[[], bool] = lambda: True
        self._device: Device | None = None
        self._running: asyncio.Task[None] | None = None
        self.control_point: Characteristic[bytes] = Characteristic(
            uuid16(uuids.RECORD_ACCESS_CONTROL_POINT),
            Characteristic.Properties.WRITE | Characteristic.Properties.INDICATE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self._on_write),
        )

    @abc.abstractmethod
    def keys(self) -> list[int]:
        """The stored records' keys, ascending."""

    @abc.abstractmethod
    async def send(self, connection: Connection, selected: list[int]) -> None:
        """Notify the selected records (the radio may lose some: that is the point)."""

    def mark_delivered(self, selected: list[int]) -> None:
        """A report completed with Success: the collector has these records."""
        self.delivered.update(selected)

    @property
    def device(self) -> Device:
        assert self._device is not None, "bind() comes first"
        return self._device

    def on_disconnection(self) -> None:
        if self._running is not None:
            self._running.cancel()
            self._running = None

    async def pause(self, sent: int) -> None:
        """Between notifications: the configured pace, or a chance for an Abort or a
        disconnection to get in every 16 records, as a real sensor would give."""
        if self.pace:
            await asyncio.sleep(self.pace)
        elif sent % 16 == 0:
            await asyncio.sleep(0)

    # -- the control point ---------------------------------------------------------------------
    def _on_write(self, connection: Connection, value: bytes) -> None:
        if not indications_enabled(self.device, connection, self.control_point):
            raise att.ATT_Error(ATT_CCCD_IMPROPERLY_CONFIGURED)  # indications first
        try:
            request = RacpRequest.decode(bytes(value))
        except ValueError:
            request = None
        self.procedures.append(bytes(value))
        running = self._running is not None and not self._running.done()
        aborting = request is not None and request.op == OpCode.ABORT_OPERATION
        if running and not aborting:
            raise att.ATT_Error(ATT_PROCEDURE_ALREADY_IN_PROGRESS)
        if running and self._running is not None:
            self._running.cancel()  # Abort: the only request accepted while one runs
        self._running = spawn(self._answer(connection, request, bytes(value)))

    async def _answer(
        self, connection: Connection, request: RacpRequest | None, raw: bytes
    ) -> None:
        if request is None:
            code = raw[0] if raw else 0
            await self._respond(connection, RacpResponse.result(code, ResponseCode.INVALID_OPERAND))
            return
        op = request.op
        if op == OpCode.ABORT_OPERATION:
            await self._respond(
                connection, RacpResponse.result(request.op_code, ResponseCode.SUCCESS)
            )
            return
        if op not in (OpCode.REPORT_STORED_RECORDS, OpCode.REPORT_NUMBER_OF_STORED_RECORDS):
            await self._respond(
                connection, RacpResponse.result(request.op_code, ResponseCode.OP_CODE_NOT_SUPPORTED)
            )
            return
        if not self.ready():
            await self._respond(
                connection,
                RacpResponse.result(request.op_code, ResponseCode.PROCEDURE_NOT_COMPLETED),
            )
            return
        selected = self._select(request)
        if isinstance(selected, ResponseCode):
            await self._respond(connection, RacpResponse.result(request.op_code, selected))
            return
        if op == OpCode.REPORT_NUMBER_OF_STORED_RECORDS:
            await self._respond(connection, RacpResponse.count(len(selected)))
            self.answered += 1
            return
        if not selected:
            await self._respond(
                connection, RacpResponse.result(request.op_code, ResponseCode.NO_RECORDS_FOUND)
            )
            return
        await self.send(connection, selected)
        await self._respond(connection, RacpResponse.result(request.op_code, ResponseCode.SUCCESS))
        self.mark_delivered(selected)
        self.answered += 1
        self.on_complete()

    def _select(self, request: RacpRequest) -> list[int] | ResponseCode:
        keys = self.keys()
        operator = request.operator_kind
        if operator is None or operator == Operator.NULL:
            return ResponseCode.INVALID_OPERATOR
        if operator == Operator.ALL_RECORDS:
            return keys
        if operator == Operator.FIRST_RECORD:
            return keys[:1]
        if operator == Operator.LAST_RECORD:
            return keys[-1:]
        if request.filter_type != FILTER_UINT16:  # only the uint16 filter is emulated
            return ResponseCode.OPERAND_NOT_SUPPORTED
        values = request.uint16_values
        if operator == Operator.LESS_THAN_OR_EQUAL:
            return [k for k in keys if k <= values[0]]
        if operator == Operator.GREATER_THAN_OR_EQUAL:
            return [k for k in keys if k >= values[0]]
        low, high = values
        if low > high:
            return ResponseCode.INVALID_OPERAND
        return [k for k in keys if low <= k <= high]

    async def _respond(self, connection: Connection, response: RacpResponse) -> None:
        await indicate(self.device, connection, self.control_point, response.encode())
