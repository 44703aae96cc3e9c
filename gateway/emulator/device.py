"""An emulated health device on bumble: its profile service (Weight Scale or Blood Pressure),
Device Information and Battery, built from a firmware profile with the codecs' ``encode``.

It behaves like real devices do: it advertises while it holds readings, indicates its stored
readings as a burst right after the gateway subscribes, then takes live measurements, and hangs up
after a quiet period. A reading leaves its memory only once the gateway *confirmed* the indication;
anything unconfirmed when the link drops is sent again on the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from bumble import core, hci
from bumble.controller import Controller
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.host import Host
from bumble.link import LocalLink
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport.common import AsyncPipeSink

from drivers import uuids
from drivers.codecs.battery import BatteryLevel
from drivers.codecs.blood_pressure import (
    BloodPressureFeature,
    BloodPressureMeasurement,
    MeasurementStatus,
    PressureUnit,
)
from drivers.codecs.date_time import DateTime
from drivers.codecs.device_information import SystemId, encode_dis_string
from drivers.codecs.health_thermometer import (
    TemperatureMeasurement,
    TemperatureType,
    TemperatureUnit,
)
from drivers.codecs.ieee11073 import MedFloat
from drivers.codecs.weight_scale import Units, WeightMeasurement, WeightScaleFeature
from firmware_profiles import DeviceFacts, EmulatedReading, FirmwareProfile, Security
from gateway.emulator.glucose import GlucoseMemory, default_feature, encode_record

log = logging.getLogger(__name__)

_SI_WEIGHT_LSB = Decimal("0.005")
_LB_WEIGHT_LSB = Decimal("0.01")
_SI_HEIGHT_LSB = Decimal("0.001")
_IN_HEIGHT_LSB = Decimal("0.1")
_BMI_LSB = Decimal("0.1")


def _steps(value: Decimal, lsb: Decimal, what: str) -> int:
    steps = value / lsb
    if steps != steps.to_integral_value() or not 0 <= steps <= 0xFFFE:
        raise ValueError(f"{what} {value} is not a whole number of {lsb} steps")
    return int(steps)


def _encode_weight(reading: EmulatedReading) -> bytes:
    imperial = reading.units == "imperial"
    weight_raw = 0xFFFF
    if not reading.unsuccessful:
        assert reading.weight is not None
        weight_raw = _steps(
            reading.weight, _LB_WEIGHT_LSB if imperial else _SI_WEIGHT_LSB, "weight"
        )
    measurement = WeightMeasurement(
        units=Units.IMPERIAL if imperial else Units.SI,
        weight_raw=weight_raw,
        timestamp=(
            DateTime.from_datetime(datetime.fromisoformat(reading.time)) if reading.time else None
        ),
        user_id=reading.user,
        bmi_raw=_steps(reading.bmi, _BMI_LSB, "bmi") if reading.bmi is not None else None,
        height_raw=(
            _steps(reading.height, _IN_HEIGHT_LSB if imperial else _SI_HEIGHT_LSB, "height")
            if reading.height is not None
            else None
        ),
    )
    return measurement.encode()


def _sfloat(value: Decimal) -> MedFloat:
    return MedFloat.from_decimal(value, short=True)


def _encode_blood_pressure(reading: EmulatedReading) -> bytes:
    assert reading.systolic is not None and reading.diastolic is not None
    assert reading.mean_arterial is not None
    measurement = BloodPressureMeasurement(
        unit=PressureUnit.KPA if reading.pressure_units == "kpa" else PressureUnit.MMHG,
        systolic=_sfloat(reading.systolic),
        diastolic=_sfloat(reading.diastolic),
        mean_arterial_pressure=_sfloat(reading.mean_arterial),
        timestamp=(
            DateTime.from_datetime(datetime.fromisoformat(reading.time)) if reading.time else None
        ),
        pulse_rate=_sfloat(reading.pulse) if reading.pulse is not None else None,
        user_id=reading.user,
        status=MeasurementStatus.from_raw(reading.status) if reading.status is not None else None,
    )
    return measurement.encode()


def _encode_temperature(reading: EmulatedReading) -> bytes:
    assert reading.temperature is not None
    fahrenheit = reading.temperature_units == "fahrenheit"
    return TemperatureMeasurement(
        unit=TemperatureUnit.FAHRENHEIT if fahrenheit else TemperatureUnit.CELSIUS,
        temperature=MedFloat.from_decimal(reading.temperature, short=False),
        timestamp=(
            DateTime.from_datetime(datetime.fromisoformat(reading.time)) if reading.time else None
        ),
        temperature_type=reading.site,
    ).encode()


def _temperature_type(facts: DeviceFacts) -> bytes | None:
    if facts.temperature_type is None:
        return None  # the device sends the type in each measurement instead
    return TemperatureType(facts.temperature_type).encode()


def _weight_feature(facts: DeviceFacts) -> bytes:
    f = facts.features
    return WeightScaleFeature(
        timestamp_supported=f.timestamp,
        multiple_users_supported=f.multiple_users,
        bmi_supported=f.bmi,
        weight_resolution=f.weight_resolution,
        height_resolution=f.height_resolution,
    ).encode()


def _bp_feature(facts: DeviceFacts) -> bytes:
    bits = set(facts.bp_features)
    return BloodPressureFeature(
        body_movement_detection="body_movement_detection" in bits,
        cuff_fit_detection="cuff_fit_detection" in bits,
        irregular_pulse_detection="irregular_pulse_detection" in bits,
        pulse_rate_range_detection="pulse_rate_range_detection" in bits,
        measurement_position_detection="measurement_position_detection" in bits,
        multiple_bonds="multiple_bonds" in bits,
    ).encode()


@dataclass(frozen=True, slots=True)
class _Kind:
    service: str
    measurement: str
    feature: str
    encode: Callable[[EmulatedReading], bytes]
    feature_value: Callable[[DeviceFacts], bytes | None]


_KINDS = {
    "weight-scale": _Kind(
        uuids.WEIGHT_SCALE_SERVICE,
        uuids.WEIGHT_MEASUREMENT,
        uuids.WEIGHT_SCALE_FEATURE,
        _encode_weight,
        _weight_feature,
    ),
    "blood-pressure": _Kind(
        uuids.BLOOD_PRESSURE_SERVICE,
        uuids.BLOOD_PRESSURE_MEASUREMENT,
        uuids.BLOOD_PRESSURE_FEATURE,
        _encode_blood_pressure,
        _bp_feature,
    ),
    "thermometer": _Kind(
        uuids.HEALTH_THERMOMETER_SERVICE,
        uuids.TEMPERATURE_MEASUREMENT,
        uuids.TEMPERATURE_TYPE,
        _encode_temperature,
        _temperature_type,
    ),
    "glucose-meter": _Kind(  # records are served by GlucoseMemory over RACP, not indicated
        uuids.GLUCOSE_SERVICE,
        uuids.GLUCOSE_MEASUREMENT,
        uuids.GLUCOSE_FEATURE,
        lambda reading: encode_record(reading, reading.sequence or 0).measurement,
        lambda _facts: default_feature().encode(),
    ),
}


class _ShowPasskey(PairingDelegate):
    """The device displays its passkey (display-only I/O) for the person to type on the gateway."""

    def __init__(self, passkey: int) -> None:
        super().__init__(io_capability=PairingDelegate.DISPLAY_OUTPUT_ONLY)
        self._passkey = passkey

    async def generate_passkey(self) -> int:
        return self._passkey

    async def display_number(self, number: int, digits: int) -> None:
        log.info("emulated device displays passkey %0*d", digits, number)


def _pairing_config(security: Security) -> PairingConfig:
    passkey = security.passkey
    return PairingConfig(
        sc=True,
        mitm=passkey is not None,
        bonding=True,
        delegate=PairingDelegate() if passkey is None else _ShowPasskey(passkey),
        identity_address_type=PairingConfig.AddressType.RANDOM,
    )


def encode_reading(reading: EmulatedReading, kind: str = "weight-scale") -> bytes:
    """The measurement bytes a device of ``kind`` sends for ``reading`` (raw ones verbatim)."""
    if reading.raw is not None:
        return bytes.fromhex(reading.raw)
    return _KINDS[kind].encode(reading)


def _uuid(text: str) -> core.UUID:
    return core.UUID.from_16_bits(int(text, 16))


def _advertising_data(name: str, service: str) -> bytes:
    return bytes(
        core.AdvertisingData(
            [
                (core.AdvertisingData.FLAGS, bytes([0x06])),
                (core.AdvertisingData.COMPLETE_LOCAL_NAME, name.encode()),
                (
                    core.AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
                    bytes.fromhex(service)[::-1],
                ),
            ]
        )
    )


def _static(uuid: str, value: bytes) -> Characteristic[bytes]:
    return Characteristic(
        _uuid(uuid),
        Characteristic.Properties.READ,
        Characteristic.READABLE,
        value,
    )


class EmulatedDevice:
    """One emulated device on a ``LocalLink``; ``acked``: confirmed reading indexes, in order."""

    def __init__(
        self,
        profile: FirmwareProfile,
        *,
        stored: list[EmulatedReading] | None = None,
        live: list[EmulatedReading] | None = None,
        address: str | None = None,
        ack_log: Path | None = None,
    ) -> None:
        if profile.emulation is None and address is None:
            raise ValueError(f"profile {profile.id} has no emulation section; give an address")
        self.profile = profile
        self.kind = _KINDS[profile.kind]
        emulation = profile.emulation
        self.address = address or (emulation.address if emulation else "")
        stored = list(emulation.stored if emulation and stored is None else stored or [])
        live = list(emulation.live if emulation and live is None else live or [])
        self.live_interval = emulation.live_interval if emulation else 0.5
        self.idle_disconnect = emulation.idle_disconnect if emulation else 1.0
        # (index, payload): index into stored + live, in sending order
        self.pending: deque[tuple[int, bytes]] = deque(
            (i, encode_reading(r, profile.kind)) for i, r in enumerate(stored)
        )
        self.unmeasured: deque[tuple[int, bytes]] = deque(
            (len(stored) + i, encode_reading(r, profile.kind)) for i, r in enumerate(live)
        )
        self.total = len(stored) + len(live)
        self.acked: list[int] = []
        self.connections = 0
        self.pairings = 0  # bonds made (a bonded gateway reconnects without pairing again)
        self.memory: GlucoseMemory | None = None
        if profile.kind == "glucose-meter":  # records wait to be asked for over RACP
            self.memory = GlucoseMemory(stored, lose_once=emulation.lose_once if emulation else [])
            self.memory.on_complete = self._on_records_delivered
            self.pending.clear()
            self.unmeasured.clear()
            self.total = self.memory.total
        self.done = asyncio.Event()
        self._ack_log = ack_log.open("a", encoding="utf-8") if ack_log else None
        self._device: Device | None = None
        self._controller: Controller | None = None
        self._session: asyncio.Task[None] | None = None
        self._measurement: Characteristic[bytes] | None = None
        if not self.pending and not self.unmeasured and not (self.memory and self.memory.total):
            self.done.set()

    # -- GATT database ---------------------------------------------------------------------
    def _services(self) -> list[Service]:
        facts = self.profile.device
        dis: list[Characteristic[bytes]] = [
            _static(uuids.MANUFACTURER_NAME, encode_dis_string(facts.manufacturer)),
            _static(uuids.MODEL_NUMBER, encode_dis_string(facts.model)),
        ]
        for uuid, text in (
            (uuids.SERIAL_NUMBER, facts.serial),
            (uuids.FIRMWARE_REVISION, facts.firmware),
            (uuids.HARDWARE_REVISION, facts.hardware),
            (uuids.SOFTWARE_REVISION, facts.software),
        ):
            if text is not None:
                dis.append(_static(uuid, encode_dis_string(text)))
        if facts.system_id:
            value = int(facts.system_id, 16)
            system_id = SystemId(manufacturer_id=value & 0xFF_FFFF_FFFF, oui=value >> 40)
            dis.append(_static(uuids.SYSTEM_ID, system_id.encode()))
        services = [Service(_uuid(uuids.DEVICE_INFORMATION_SERVICE), dis)]
        if facts.battery is not None:
            services.append(
                Service(
                    _uuid(uuids.BATTERY_SERVICE),
                    [_static(uuids.BATTERY_LEVEL, BatteryLevel(percent=facts.battery).encode())],
                )
            )
        if self.memory is not None:
            records = self.memory.characteristics(default_feature())
            services.append(Service(_uuid(self.kind.service), records))
            return services
        self._measurement = Characteristic(
            _uuid(self.kind.measurement),
            Characteristic.Properties.INDICATE,
            Characteristic.READABLE,
            CharacteristicValue(read=lambda _connection: b""),
        )
        self._measurement.on(Characteristic.EVENT_SUBSCRIPTION, self._on_subscription)
        characteristics: list[Characteristic[bytes]] = [self._measurement]
        feature = self.kind.feature_value(facts)
        if feature is not None:
            characteristics.insert(0, _static(self.kind.feature, feature))
        services.append(Service(_uuid(self.kind.service), characteristics))
        return services

    # -- lifecycle -----------------------------------------------------------------------
    async def attach(self, link: LocalLink) -> None:
        """Power the scale on, on ``link``, and advertise if it has something to send."""
        self._controller = Controller(f"emu-{self.profile.id}", link=link)
        host = Host(self._controller, AsyncPipeSink(self._controller))
        self._device = Device(
            name=self.profile.device.name, address=hci.Address(self.address), host=host
        )
        self._device.add_services(self._services())
        self._secure(self._device)
        self._device.on(self._device.EVENT_CONNECTION, self._on_connection)
        await self._device.power_on()
        await self._advertise_if_needed()

    def _secure(self, device: Device) -> None:
        """Demand the pairing the profile says, on the characteristics that carry readings."""
        security = self.profile.security
        protected = security.pairing != "none"
        authenticated = security.pairing == "passkey"
        if self.memory is not None:
            self.memory.bind(device, encrypted=protected, authenticated=authenticated)
        elif protected:
            assert self._measurement is not None
            cccd = device.gatt_server.get_descriptor_attribute(
                _uuid(self.kind.service), self._measurement.uuid, core.UUID.from_16_bits(0x2902)
            )
            assert cccd is not None
            cccd.permissions |= Characteristic.WRITE_REQUIRES_ENCRYPTION
        if protected:
            device.pairing_config_factory = lambda _connection: _pairing_config(security)

    def _on_records_delivered(self) -> None:
        assert self.memory is not None
        self.acked = sorted(self.memory.delivered)
        if len(self.memory.delivered) >= self.memory.total:
            self.done.set()

    async def detach(self) -> None:
        if self._session:
            self._session.cancel()
        if self._device is not None:
            with contextlib.suppress(Exception):
                await self._device.power_off()
        if self._controller is not None:
            self._controller.link.remove_controller(self._controller)
        if self._ack_log:
            self._ack_log.close()
            self._ack_log = None

    async def _advertise_if_needed(self) -> None:
        assert self._device is not None
        if self.done.is_set():
            return
        await self._device.start_advertising(
            advertising_data=_advertising_data(self.profile.device.name, self.kind.service),
            advertising_interval_min=20,
            advertising_interval_max=20,
        )

    def _on_connection(self, connection: Connection) -> None:
        self.connections += 1
        connection.on(connection.EVENT_DISCONNECTION, lambda *_: self._on_disconnection())
        connection.on(connection.EVENT_PAIRING, lambda keys: self._on_pairing(connection, keys))

    def _on_pairing(self, connection: Connection, keys: Any) -> None:
        self.pairings += 1
        ltk = getattr(keys, "ltk", None)
        if self.profile.security.pairing == "passkey" and not (ltk and ltk.authenticated):
            # A meter that shows a passkey refuses a bond made without it (Just Works).
            log.info("emulated device refused an unauthenticated bond")
            task = asyncio.get_running_loop().create_task(connection.disconnect())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def _on_disconnection(self) -> None:
        if self.memory is not None:
            if self.memory.answered:  # a collector synchronised with us: like a meter, sleep
                self.done.set()
            self.memory.answered = 0
            self.memory.on_disconnection()
        if self._session:
            self._session.cancel()
            self._session = None
        task = asyncio.get_running_loop().create_task(self._advertise_if_needed())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def _on_subscription(self, bearer: Any, _notify: bool, indicate: bool) -> None:
        if indicate and self._session is None and self.memory is None:
            connection = getattr(bearer, "connection", bearer)
            self._session = asyncio.get_running_loop().create_task(self._send(connection))

    # -- the conversation --------------------------------------------------------------------
    async def _indicate(self, connection: Connection, index: int, payload: bytes) -> None:
        assert self._device is not None and self._measurement is not None
        await self._device.indicate_subscriber(connection, self._measurement, payload)
        self.acked.append(index)
        if self._ack_log:
            self._ack_log.write(json.dumps({"index": index, "hex": payload.hex()}) + "\n")
            self._ack_log.flush()

    async def _send(self, connection: Connection) -> None:
        try:
            while self.pending:  # the stored burst
                index, payload = self.pending[0]
                await self._indicate(connection, index, payload)
                self.pending.popleft()
            while self.unmeasured:  # live measurements; unconfirmed ones join the memory
                await asyncio.sleep(self.live_interval)
                self.pending.append(self.unmeasured.popleft())
                index, payload = self.pending[0]
                await self._indicate(connection, index, payload)
                self.pending.popleft()
            if len(self.acked) >= self.total:
                self.done.set()
            await asyncio.sleep(self.idle_disconnect)
            await connection.disconnect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # link dropped mid-indication: the reading stays pending
            log.debug("emulated scale session ended: %s", exc)
