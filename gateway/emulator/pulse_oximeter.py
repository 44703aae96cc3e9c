"""An emulated pulse oximeter (PLXS 0x1822): spot-checks indicated, a continuous stream notified.

Spot-checks behave like the other indicated profiles: the stored ones go out as a burst once the
gateway enables indications, then one live measurement every ``live_interval``; a spot-check leaves
the memory only when the gateway *confirmed* it, so anything unconfirmed when the link drops is
sent again on the next connection. Continuous samples are notified every ``live_interval`` once the
gateway enables notifications; nothing confirms a notification, so a sample counts as delivered
when sent (as on a real sensor, what the gateway misses is gone). The oximeter has no record
storage (no RACP, Features bit 2 off) and hangs up after ``idle_disconnect`` of quiet.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import datetime
from decimal import Decimal
from typing import Any

from bumble import att, core
from bumble.device import Connection, Device
from bumble.gatt import Characteristic

from drivers import uuids
from drivers.codecs import pulse_oximeter as plx
from drivers.codecs.date_time import DateTime
from drivers.codecs.ieee11073 import MedFloat
from firmware_profiles import EmulatedReading, FirmwareProfile, PlxFacts

log = logging.getLogger(__name__)

_CCCD = core.UUID.from_16_bits(0x2902)
_NOTIFY, _INDICATE = 0x01, 0x02  # CCCD bits
_ALL_MEASUREMENT_STATUS = 0xFFE0  # every defined Measurement Status bit (b5-b15)
_ALL_DEVICE_STATUS = 0x00FFFF  # every defined Device and Sensor Status bit (b0-b15)


def _sfloat(value: Decimal) -> MedFloat:
    return MedFloat.from_decimal(value, short=True)


def _statuses(
    reading: EmulatedReading,
) -> tuple[plx.PlxMeasurementStatus | None, plx.PlxDeviceSensorStatus | None]:
    status = reading.plx_status
    device = reading.sensor_status
    return (
        plx.PlxMeasurementStatus.from_raw(status) if status is not None else None,
        plx.PlxDeviceSensorStatus.from_raw(device) if device is not None else None,
    )


def encode_plx(reading: EmulatedReading, facts: PlxFacts) -> bytes:
    """The value a PLX oximeter sends for ``reading`` (raw ones verbatim)."""
    if reading.raw is not None:
        return bytes.fromhex(reading.raw)
    assert reading.spo2 is not None and reading.pulse is not None
    status, device = _statuses(reading)
    pai = reading.pulse_amplitude_index
    amplitude = _sfloat(pai) if pai is not None else None
    if reading.plx_mode == "continuous":
        if reading.time is not None:
            raise ValueError("a PLX continuous sample carries no time stamp")
        return plx.PlxContinuous(
            spo2=_sfloat(reading.spo2),
            pulse_rate=_sfloat(reading.pulse),
            measurement_status=status,
            device_sensor_status=device,
            pulse_amplitude_index=amplitude,
        ).encode()
    stamped = facts.timestamp and reading.time is not None
    return plx.PlxSpotCheck(
        spo2=_sfloat(reading.spo2),
        pulse_rate=_sfloat(reading.pulse),
        timestamp=(
            DateTime.from_datetime(datetime.fromisoformat(reading.time or "")) if stamped else None
        ),
        measurement_status=status,
        device_sensor_status=device,
        pulse_amplitude_index=amplitude,
    ).encode()


def features(facts: PlxFacts) -> plx.PlxFeatures:
    """PLX Features as the facts say; never spot-check storage (no RACP is emulated)."""
    return plx.PlxFeatures(
        spot_check_timestamp=facts.spot_check and facts.timestamp,
        pulse_amplitude_index=facts.pulse_amplitude_index,
        measurement_status_support=(
            plx.PlxMeasurementStatus.from_raw(_ALL_MEASUREMENT_STATUS)
            if facts.measurement_status
            else None
        ),
        device_sensor_status_support=(
            plx.PlxDeviceSensorStatus.from_raw(_ALL_DEVICE_STATUS)
            if facts.device_sensor_status
            else None
        ),
    )


def _uuid(text: str) -> core.UUID:
    return core.UUID.from_16_bits(int(text, 16))


class PulseOximeter:
    """The PLX service of one emulated oximeter and the conversation it holds on each link."""

    def __init__(
        self,
        facts: PlxFacts,
        readings: list[EmulatedReading],
        *,
        stored: int,
        live_interval: float = 0.5,
        idle_disconnect: float = 1.0,
    ) -> None:
        """``readings``: stored then live ones; the first ``stored`` spot-checks are in memory."""
        self.facts = facts
        self.live_interval = live_interval
        self.idle_disconnect = idle_disconnect
        self.memory: deque[tuple[int, bytes]] = deque()  # spot-checks taken, not yet confirmed
        self.upcoming: deque[tuple[int, bytes]] = deque()  # live spot-checks, not yet taken
        self.stream: deque[tuple[int, bytes]] = deque()  # continuous samples, not yet sent
        for index, reading in enumerate(readings):
            entry = (index, encode_plx(reading, facts))
            if reading.plx_mode == "continuous":
                if not facts.continuous:
                    raise ValueError(f"reading {index} is continuous; device.plx.continuous is off")
                self.stream.append(entry)
            elif not facts.spot_check:
                raise ValueError(f"reading {index} is a spot-check; device.plx.spot_check is off")
            else:
                (self.memory if index < stored else self.upcoming).append(entry)
        self._total = len(readings)
        self.delivered: set[int] = set()
        self.answered = 0  # no control point: never synchronised, the device sleeps when done
        self.on_complete: Callable[[], None] = lambda: None
        self._device: Device | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._senders: dict[str, asyncio.Task[None]] = {}  # by stream, on the current link
        self._quiet_since = 0.0
        self._watchdog: asyncio.Task[None] | None = None
        self.spot_check: Characteristic[bytes] = Characteristic(
            _uuid(uuids.PLX_SPOT_CHECK_MEASUREMENT),
            Characteristic.Properties.INDICATE,
            Characteristic.READABLE,
            b"",
        )
        self.continuous: Characteristic[bytes] = Characteristic(
            _uuid(uuids.PLX_CONTINUOUS_MEASUREMENT),
            Characteristic.Properties.NOTIFY,
            Characteristic.READABLE,
            b"",
        )
        self.spot_check.on(Characteristic.EVENT_SUBSCRIPTION, self._on_spot_check_subscription)
        self.continuous.on(Characteristic.EVENT_SUBSCRIPTION, self._on_continuous_subscription)

    @classmethod
    def from_profile(cls, profile: FirmwareProfile) -> PulseOximeter:
        emulation = profile.emulation
        if emulation is None:
            return cls(profile.device.plx, [], stored=0)
        return cls(
            profile.device.plx,
            [*emulation.stored, *emulation.live],
            stored=len(emulation.stored),
            live_interval=emulation.live_interval,
            idle_disconnect=emulation.idle_disconnect,
        )

    @property
    def total(self) -> int:
        return self._total

    def characteristics(self) -> list[Characteristic[bytes]]:
        feature = Characteristic(
            _uuid(uuids.PLX_FEATURES),
            Characteristic.Properties.READ,
            Characteristic.READABLE,
            features(self.facts).encode(),
        )
        return [feature, *self._measurements()]

    def _measurements(self) -> list[Characteristic[bytes]]:
        """The measurement characteristics this model offers."""
        offered = (self.facts.spot_check, self.facts.continuous)
        return [c for c, on in zip((self.spot_check, self.continuous), offered, strict=True) if on]

    def bind(self, device: Device, *, encrypted: bool, authenticated: bool) -> None:
        """After ``add_services``: readings flow only once the CCCD write was secured enough."""
        self._device = device
        demanded = att.Attribute.WRITE_REQUIRES_ENCRYPTION if encrypted else 0
        if authenticated:
            demanded |= att.Attribute.WRITE_REQUIRES_AUTHENTICATION
        if not demanded:
            return
        service = _uuid(uuids.PULSE_OXIMETER_SERVICE)
        for characteristic in self._measurements():
            cccd = device.gatt_server.get_descriptor_attribute(service, characteristic.uuid, _CCCD)
            assert cccd is not None, "bumble adds a CCCD to every notifying characteristic"
            cccd.permissions |= demanded

    def on_disconnection(self) -> None:
        for task in (*self._senders.values(), self._watchdog):
            if task is not None:
                task.cancel()
        self._senders.clear()
        self._watchdog = None

    # -- the conversation ------------------------------------------------------------------
    def _on_spot_check_subscription(self, bearer: Any, _notify: bool, indicate: bool) -> None:
        if indicate:
            self._begin(getattr(bearer, "connection", bearer), self._send_spot_checks)

    def _on_continuous_subscription(self, bearer: Any, notify: bool, _indicate: bool) -> None:
        if notify:
            self._begin(getattr(bearer, "connection", bearer), self._send_stream)

    def _begin(
        self,
        connection: Connection,
        sender: Callable[[Connection], Coroutine[Any, Any, None]],
    ) -> None:
        """Run the stream's sender on this link (once, however often the CCCD is written) and
        make sure someone hangs up once everything went quiet."""
        self._touch()
        name = sender.__name__
        running = self._senders.get(name)
        if running is None or running.done():
            self._senders[name] = self._spawn(sender(connection))
        if self._watchdog is None:
            self._watchdog = self._spawn(self._hang_up_when_quiet(connection))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._senders = {name: t for name, t in self._senders.items() if t is not task}
        if not task.cancelled() and task.exception() is not None:
            log.debug("emulated oximeter task ended: %s", task.exception())
        self._touch()

    def _touch(self) -> None:
        self._quiet_since = asyncio.get_running_loop().time()

    def _enabled(
        self, connection: Connection, characteristic: Characteristic[bytes], bit: int
    ) -> bool:
        assert self._device is not None
        cccds = self._device.gatt_server.subscribers.get(connection, {})
        return bool(cccds.get(characteristic.handle, b"\x00\x00")[0] & bit)

    def _delivered(self, index: int) -> None:
        self.delivered.add(index)
        self._touch()
        self.on_complete()

    async def _send_spot_checks(self, connection: Connection) -> None:
        """Memory first (stored, then live ones left unconfirmed), then a live one at a time."""
        assert self._device is not None
        while True:
            while self.memory:
                if not self._enabled(connection, self.spot_check, _INDICATE):
                    return  # bumble would skip the indication and we would count it sent
                index, payload = self.memory[0]
                try:
                    await self._device.indicate_subscriber(connection, self.spot_check, payload)
                except TimeoutError:
                    return  # never confirmed: stays in memory for the next connection
                self.memory.popleft()
                self._delivered(index)
            if not self.upcoming:
                return
            await asyncio.sleep(self.live_interval)
            self.memory.append(self.upcoming.popleft())  # measured: kept until confirmed

    async def _send_stream(self, connection: Connection) -> None:
        assert self._device is not None
        while self.stream:
            await asyncio.sleep(self.live_interval)
            if not self._enabled(connection, self.continuous, _NOTIFY):
                return
            index, payload = self.stream.popleft()
            await self._device.notify_subscriber(connection, self.continuous, payload)
            self._delivered(index)

    async def _hang_up_when_quiet(self, connection: Connection) -> None:
        """Like the other emulated devices: hang up once nothing was sent for a while."""
        loop = asyncio.get_running_loop()
        while True:
            if self._senders:
                await asyncio.wait(list(self._senders.values()))
                continue
            left = self._quiet_since + self.idle_disconnect - loop.time()
            if left <= 0:
                break
            await asyncio.sleep(left)
        self._watchdog = None
        await connection.disconnect()


def from_profile(profile: FirmwareProfile) -> PulseOximeter:
    return PulseOximeter.from_profile(profile)
