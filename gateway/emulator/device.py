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
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bumble import att, core, hci
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
from drivers.codecs.body_composition import (
    BODY_FAT_UNSUCCESSFUL,
    BodyCompositionFeature,
    BodyCompositionMeasurement,
    split_packets,
)
from drivers.codecs.current_time import CurrentTime
from drivers.codecs.date_time import DateTime
from drivers.codecs.device_information import SystemId, encode_dis_string
from drivers.codecs.errors import DecodeError
from drivers.codecs.health_thermometer import (
    TemperatureMeasurement,
    TemperatureType,
    TemperatureUnit,
)
from drivers.codecs.ieee11073 import MedFloat
from drivers.codecs.user_data import (
    DatabaseChangeIncrement,
    UcpOpCode,
    UcpRequest,
    UcpResponse,
    UcpResponseValue,
    UserIndex,
)
from drivers.codecs.weight_scale import Units, WeightMeasurement, WeightScaleFeature
from firmware_profiles import DeviceFacts, EmulatedReading, FirmwareProfile, Security
from gateway.emulator import cgm, pulse_oximeter
from gateway.emulator.glucose import GlucoseMemory, default_feature, encode_record
from gateway.emulator.racp_server import RacpServer
from gateway.emulator.server import ProfileServer, ServerFactory

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


_PERCENT_LSB = Decimal("0.1")
_IMPEDANCE_LSB = Decimal("0.1")


def _encode_body_composition(reading: EmulatedReading) -> bytes:
    imperial = reading.units == "imperial"
    mass_lsb = _LB_WEIGHT_LSB if imperial else _SI_WEIGHT_LSB

    def mass(value: Decimal | None, what: str) -> int | None:
        return None if value is None else _steps(value, mass_lsb, what)

    body_fat_raw = BODY_FAT_UNSUCCESSFUL
    if not reading.unsuccessful:
        assert reading.body_fat is not None
        body_fat_raw = _steps(reading.body_fat, _PERCENT_LSB, "body_fat")
    return BodyCompositionMeasurement(
        units=Units.IMPERIAL if imperial else Units.SI,
        body_fat_raw=body_fat_raw,
        timestamp=(
            DateTime.from_datetime(datetime.fromisoformat(reading.time)) if reading.time else None
        ),
        user_id=reading.user,
        basal_metabolism_raw=reading.basal_metabolism,
        muscle_percentage_raw=(
            None
            if reading.muscle_percentage is None
            else _steps(reading.muscle_percentage, _PERCENT_LSB, "muscle_percentage")
        ),
        muscle_mass_raw=mass(reading.muscle_mass, "muscle_mass"),
        fat_free_mass_raw=mass(reading.fat_free_mass, "fat_free_mass"),
        soft_lean_mass_raw=mass(reading.soft_lean_mass, "soft_lean_mass"),
        body_water_mass_raw=mass(reading.body_water_mass, "body_water_mass"),
        impedance_raw=(
            None
            if reading.impedance is None
            else _steps(reading.impedance, _IMPEDANCE_LSB, "impedance")
        ),
        weight_raw=mass(reading.weight, "weight"),
        height_raw=(
            _steps(reading.height, _IN_HEIGHT_LSB if imperial else _SI_HEIGHT_LSB, "height")
            if reading.height is not None
            else None
        ),
    ).encode()


def _body_composition_feature(facts: DeviceFacts) -> bytes:
    """Every optional field supported; timestamp and users as the profile's features say."""
    f = facts.features
    return BodyCompositionFeature(
        timestamp_supported=f.timestamp,
        multiple_users_supported=f.multiple_users,
        basal_metabolism_supported=True,
        muscle_percentage_supported=True,
        muscle_mass_supported=True,
        fat_free_mass_supported=True,
        soft_lean_mass_supported=True,
        body_water_mass_supported=True,
        impedance_supported=True,
        weight_supported=True,
        height_supported=True,
        mass_resolution=f.weight_resolution,
        height_resolution=f.height_resolution,
    ).encode()


def _split_body_composition(payload: bytes, max_size: int) -> tuple[bytes, ...]:
    """A record longer than one ATT payload goes as a multiple-packet pair (BCS flag b12)."""
    if len(payload) <= max_size:
        return (payload,)
    record = BodyCompositionMeasurement.decode(payload)
    return tuple(packet.encode() for packet in split_packets(record, max_size))


def _one_packet(payload: bytes, _max_size: int) -> tuple[bytes, ...]:
    return (payload,)


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
class _Pending:
    """A reading waiting for a confirmed delivery: its index in stored + live, the values it is
    sent as, and whose it is (multi-user devices)."""

    index: int
    packets: tuple[bytes, ...]
    user: int | None


@dataclass(frozen=True, slots=True)
class _Kind:
    service: str
    measurement: str
    feature: str
    encode: Callable[[EmulatedReading], bytes]
    feature_value: Callable[[DeviceFacts], bytes | None]
    packets: Callable[[bytes, int], tuple[bytes, ...]] = _one_packet


def _served(_item: object) -> bytes:
    raise TypeError("this kind's values are built by its profile server")


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
    "body-composition": _Kind(
        uuids.BODY_COMPOSITION_SERVICE,
        uuids.BODY_COMPOSITION_MEASUREMENT,
        uuids.BODY_COMPOSITION_FEATURE,
        _encode_body_composition,
        _body_composition_feature,
        _split_body_composition,
    ),
    "cgm": _Kind(  # served by gateway.emulator.cgm
        uuids.CGM_SERVICE, uuids.CGM_MEASUREMENT, uuids.CGM_FEATURE, _served, _served
    ),
    "pulse-oximeter": _Kind(  # served by gateway.emulator.pulse_oximeter
        uuids.PULSE_OXIMETER_SERVICE,
        uuids.PLX_SPOT_CHECK_MEASUREMENT,
        uuids.PLX_FEATURES,
        _served,
        _served,
    ),
}


# Profiles whose readings flow through their own server (control points, several streams).
_SERVERS: dict[str, ServerFactory] = {
    "glucose-meter": GlucoseMemory.from_profile,
    "cgm": cgm.from_profile,
    "pulse-oximeter": pulse_oximeter.from_profile,
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
        # (index, packets): index into stored + live, in sending order; a reading is one value,
        # or two for a body-composition record that does not fit one ATT payload
        self.pending: deque[_Pending] = deque()
        self.unmeasured: deque[_Pending] = deque()
        self.acked: list[int] = []
        self.connections = 0
        self.pairings = 0  # bonds made (a bonded gateway reconnects without pairing again)
        self.server: ProfileServer | None = None
        factory = _SERVERS.get(profile.kind)
        if factory is not None:  # readings flow through the profile's own server
            self.server = factory(profile)
            self.server.on_complete = self._on_records_delivered
            if isinstance(self.server, RacpServer) and profile.time.set_before_records:
                self.server.ready = lambda: self.clock_set
            self.total = self.server.total
        else:
            max_packet = emulation.max_packet if emulation else 20

            def packets(reading: EmulatedReading) -> tuple[bytes, ...]:
                payload = encode_reading(reading, profile.kind)
                if reading.raw is not None:
                    return (payload,)  # captured bytes go out exactly as captured
                return self.kind.packets(payload, max_packet)

            self.pending.extend(_Pending(i, packets(r), r.user) for i, r in enumerate(stored))
            self.unmeasured.extend(
                _Pending(len(stored) + i, packets(r), r.user) for i, r in enumerate(live)
            )
            self.total = len(stored) + len(live)
        self.clock_offset = timedelta(seconds=emulation.clock_offset if emulation else 0.0)
        self.clock_writes: list[datetime] = []  # what the gateway set the clock to, in order
        self.clock_set = False  # set during the current connection
        self.users = {u.index: u.consent_code for u in profile.device.users}
        self.current_user: int | None = None  # consented on the current connection
        self.consents: list[tuple[int, bool]] = []  # (user index, accepted), in order
        self.done = asyncio.Event()
        self._ack_log = ack_log.open("a", encoding="utf-8") if ack_log else None
        self._device: Device | None = None
        self._controller: Controller | None = None
        self._session: asyncio.Task[None] | None = None
        self._measurement: Characteristic[bytes] | None = None
        if not self.pending and not self.unmeasured and not (self.server and self.server.total):
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
        if self.profile.time.current_time:
            services.append(self._current_time_service())
        if self.users:
            services.append(self._user_data_service())
        if facts.battery is not None:
            services.append(
                Service(
                    _uuid(uuids.BATTERY_SERVICE),
                    [_static(uuids.BATTERY_LEVEL, BatteryLevel(percent=facts.battery).encode())],
                )
            )
        if self.server is not None:
            services.append(Service(_uuid(self.kind.service), self.server.characteristics()))
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

    def _current_time_service(self) -> Service:
        writable = self.profile.time.writable
        properties = Characteristic.Properties.READ
        permissions = Characteristic.READABLE
        if writable:
            properties |= Characteristic.Properties.WRITE
            permissions |= Characteristic.WRITEABLE
        current_time: Characteristic[bytes] = Characteristic(
            _uuid(uuids.CURRENT_TIME),
            properties,
            permissions,
            CharacteristicValue(
                read=lambda _connection: CurrentTime.from_datetime(self.wall_clock()).encode(),
                write=self._on_clock_write if writable else None,
            ),
        )
        return Service(_uuid(uuids.CURRENT_TIME_SERVICE), [current_time])

    def _user_data_service(self) -> Service:
        self._control_point: Characteristic[bytes] = Characteristic(
            _uuid(uuids.USER_CONTROL_POINT),
            Characteristic.Properties.WRITE | Characteristic.Properties.INDICATE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self._on_user_control),
        )
        user_index: Characteristic[bytes] = Characteristic(
            _uuid(uuids.USER_INDEX),
            Characteristic.Properties.READ,
            Characteristic.READABLE,
            CharacteristicValue(
                read=lambda _c: UserIndex(
                    index=0xFF if self.current_user is None else self.current_user
                ).encode()
            ),
        )
        increment = _static(
            uuids.DATABASE_CHANGE_INCREMENT, DatabaseChangeIncrement(increment=0).encode()
        )
        return Service(_uuid(uuids.USER_DATA_SERVICE), [increment, user_index, self._control_point])

    def _on_user_control(self, connection: Connection, value: bytes) -> None:
        try:
            request = UcpRequest.decode(bytes(value))
        except DecodeError:
            raise att.ATT_Error(0x80) from None  # op code not recognisable
        if request.op_code == UcpOpCode.CONSENT and request.user_index is not None:
            accepted = self.users.get(request.user_index) == request.consent_code
            self.consents.append((request.user_index, accepted))
            if request.user_index not in self.users:
                outcome = UcpResponseValue.INVALID_PARAMETER
            elif accepted:
                self.current_user, outcome = request.user_index, UcpResponseValue.SUCCESS
            else:
                outcome = UcpResponseValue.USER_NOT_AUTHORIZED
            response = UcpResponse(request_op_code=request.op_code, response_value=outcome)
        elif request.op_code == UcpOpCode.REGISTER_NEW_USER and request.consent_code is not None:
            index = max(self.users, default=-1) + 1
            self.users[index] = request.consent_code
            self.current_user = index
            response = UcpResponse.registered(index)
        else:
            response = UcpResponse(
                request_op_code=request.op_code,
                response_value=UcpResponseValue.OP_CODE_NOT_SUPPORTED,
            )
        task = asyncio.get_running_loop().create_task(self._answer_user(connection, response))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _answer_user(self, connection: Connection, response: UcpResponse) -> None:
        assert self._device is not None
        await self._device.indicate_subscriber(connection, self._control_point, response.encode())

    def wall_clock(self) -> datetime:
        """The emulated device's own (naive) clock: true UTC time plus its offset."""
        return datetime.now(UTC).replace(tzinfo=None) + self.clock_offset

    def _on_clock_write(self, _connection: Connection, value: bytes) -> None:
        try:
            written = CurrentTime.decode(bytes(value)).to_datetime()
        except DecodeError:
            written = None
        if written is None:
            raise att.ATT_Error(0x80)  # Application error: Data field ignored (CTS)
        self.clock_offset = written - datetime.now(UTC).replace(tzinfo=None)
        self.clock_writes.append(written)
        self.clock_set = True

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
        if self.server is not None:
            self.server.bind(device, encrypted=protected, authenticated=authenticated)
        elif protected:
            assert self._measurement is not None
            cccd = device.gatt_server.get_descriptor_attribute(
                _uuid(self.kind.service), self._measurement.uuid, core.UUID.from_16_bits(0x2902)
            )
            assert cccd is not None
            cccd.permissions |= Characteristic.WRITE_REQUIRES_ENCRYPTION
        if protected:
            device.pairing_config_factory = lambda _connection: _pairing_config(security)

    @property
    def memory(self) -> GlucoseMemory | None:
        """The glucose meter's record store (tests and the RACP benchmark look into it)."""
        return self.server if isinstance(self.server, GlucoseMemory) else None

    def _on_records_delivered(self) -> None:
        assert self.server is not None
        self.acked = sorted(self.server.delivered)
        if len(self.server.delivered) >= self.server.total:
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
        self.clock_set = False
        self.current_user = None
        if self.server is not None:
            if self.server.answered:  # a collector synchronised with us: like a meter, sleep
                self.done.set()
            self.server.answered = 0
            self.server.on_disconnection()
        if self._session:
            self._session.cancel()
            self._session = None
        task = asyncio.get_running_loop().create_task(self._advertise_if_needed())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def _on_subscription(self, bearer: Any, _notify: bool, indicate: bool) -> None:
        if indicate and self._session is None and self.server is None:
            connection = getattr(bearer, "connection", bearer)
            self._session = asyncio.get_running_loop().create_task(self._send(connection))

    # -- the conversation --------------------------------------------------------------------
    async def _indicate(
        self, connection: Connection, index: int, packets: tuple[bytes, ...]
    ) -> None:
        """A reading is delivered once every packet of it was confirmed; if the link drops
        half-way, all of it is sent again next time."""
        assert self._device is not None and self._measurement is not None
        for payload in packets:
            await self._device.indicate_subscriber(connection, self._measurement, payload)
        self.acked.append(index)
        if self._ack_log:
            record = {"index": index, "hex": b"".join(packets).hex()}
            self._ack_log.write(json.dumps(record) + "\n")
            self._ack_log.flush()

    def _releasable(self, entry: _Pending) -> bool:
        """Multi-user devices release only the consented user's readings."""
        return not self.users or (entry.user is not None and entry.user == self.current_user)

    async def _send(self, connection: Connection) -> None:
        try:
            for entry in [e for e in self.pending if self._releasable(e)]:  # the stored burst
                await self._indicate(connection, entry.index, entry.packets)
                self.pending.remove(entry)
            while self.unmeasured:  # live measurements; unconfirmed ones join the memory
                await asyncio.sleep(self.live_interval)
                entry = self.unmeasured.popleft()
                self.pending.append(entry)
                if self._releasable(entry):
                    await self._indicate(connection, entry.index, entry.packets)
                    self.pending.remove(entry)
            if len(self.acked) >= self.total:
                self.done.set()
            await asyncio.sleep(self.idle_disconnect)
            await connection.disconnect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # link dropped mid-indication: the reading stays pending
            log.debug("emulated scale session ended: %s", exc)
