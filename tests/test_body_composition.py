"""Body Composition over bumble's virtual link: multiple-packet records merged into one reading,
lone halves quarantined, values exact, FHIR output valid."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal

import pytest
from bumble.link import LocalLink

from drivers.body_composition import BodyCompositionDriver
from drivers.codecs.body_composition import BodyCompositionMeasurement, split_packets
from drivers.codecs.date_time import DateTime
from drivers.codecs.errors import DecodeError
from drivers.codecs.weight_scale import Units
from drivers.models import Absent, Reading
from drivers.session import SessionSummary
from firmware_profiles import EmulatedReading, load_profiles
from gateway.emulator import EmulatedDevice
from gateway.link.bumble_link import BumbleLink
from mappers.phd import map_reading
from tests.mappers.factories import GATEWAY, PATIENT, observations, validate_entries

PROFILES = load_profiles()
PROFILE = PROFILES["generic-bcs"]


class Sink:
    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.malformed: list[tuple[bytes, DecodeError]] = []

    async def on_reading(self, reading: Reading) -> None:
        self.readings.append(reading)

    async def on_readings(self, readings) -> None:
        self.readings.extend(readings)

    async def on_malformed(self, device, characteristic, payload, error) -> None:
        self.malformed.append((payload, error))

    async def load_cursor(self, device, stream) -> int | None:
        return None

    async def save_cursor(self, device, stream, value) -> None:
        return None


async def _download(device: EmulatedDevice) -> tuple[Sink, SessionSummary]:
    link = LocalLink()
    central = BumbleLink(local_link=link)
    await central.open()
    await device.attach(link)
    try:
        (ad,) = await central.scan(0.3, [BodyCompositionDriver.SERVICE])
        driver = BodyCompositionDriver(profiles=PROFILES, zone=UTC, idle_timeout=1.0)
        sink = Sink()
        summary = await driver.run(central, ad, sink)
    finally:
        await device.detach()
        await central.close()
    return sink, summary


def _values(reading: Reading) -> dict[str, tuple[Decimal | None, str]]:
    return {q.name: (q.value, q.unit) for q in reading.quantities}


async def test_a_record_sent_as_two_packets_arrives_as_one_exact_reading() -> None:
    device = EmulatedDevice(PROFILE)
    first_packets = device.pending[0].packets
    assert len(first_packets) == 2 and all(len(p) <= 20 for p in first_packets)
    assert all(BodyCompositionMeasurement.decode(p).multiple_packet for p in first_packets)
    sink, summary = await _download(device)
    assert summary.malformed == 0 and device.acked == [0, 1, 2]
    full, short, failed = sink.readings
    assert _values(full) == {
        "body-fat": (Decimal("23.5"), "%"),
        "body-weight": (Decimal("72.350"), "kg"),
        "body-height": (Decimal("1.750"), "m"),
        "fat-free-mass": (Decimal("55.350"), "kg"),
        "soft-lean-mass": (Decimal("52.100"), "kg"),
        "body-water-mass": (Decimal("40.450"), "kg"),
        "muscle-mass": (Decimal("30.100"), "kg"),
        "muscle-percentage": (Decimal("41.6"), "%"),
        "impedance": (Decimal("512.3"), "Ohm"),
        "basal-metabolism": (Decimal("6300"), "kJ"),
    }
    assert full.raw == b"".join(first_packets).hex()  # both packets kept, in order
    assert full.user_index == 1 and full.device_time is not None
    assert full.device_time.isoformat() == "2026-11-22T07:12:40"
    assert _values(short) == {
        "body-fat": (Decimal("23.1"), "%"),
        "body-weight": (Decimal("72.100"), "kg"),
    }
    assert failed.quantities[0].absent == Absent.UNSUCCESSFUL
    assert len({r.key for r in sink.readings}) == 3


async def test_the_merged_reading_maps_to_valid_fhir_without_the_uncoded_values() -> None:
    sink, _ = await _download(EmulatedDevice(PROFILE))
    entries = map_reading(sink.readings[0], PATIENT, GATEWAY)
    validate_entries(entries)
    codes = [o["code"]["coding"][0]["code"] for o in observations(entries)]
    # body fat, weight, height, fat-free, soft lean, water; muscle, impedance, BMR have no code;
    # then the session's battery level (device status, on the first reading)
    assert codes == ["188748", "188736", "188740", "188756", "188760", "188764", "67996"]
    fat = observations(entries)[0]
    assert fat["valueQuantity"]["value"] == Decimal("23.5")


def _record(minute: int, **fields: object) -> BodyCompositionMeasurement:
    return BodyCompositionMeasurement(
        units=Units.SI,
        body_fat_raw=231,
        timestamp=DateTime(year=2026, month=11, day=24, hours=7, minutes=minute, seconds=0),
        user_id=1,
        **fields,  # type: ignore[arg-type]
    )


async def test_a_lone_half_is_quarantined_and_the_next_record_still_arrives() -> None:
    big = _record(
        1,
        weight_raw=14470,
        height_raw=1750,
        fat_free_mass_raw=11070,
        soft_lean_mass_raw=10420,
        body_water_mass_raw=8090,
        impedance_raw=5123,
    )
    first_half, _second_half = split_packets(big)
    whole = _record(2, weight_raw=14420)
    stored = [
        EmulatedReading(raw=first_half.encode().hex()),  # its other half never comes
        EmulatedReading(raw=whole.encode().hex()),
        EmulatedReading(raw="0010"),  # too short: malformed on its own
    ]
    sink, summary = await _download(EmulatedDevice(PROFILE, stored=stored, live=[]))
    assert [r.device_time.minute for r in sink.readings if r.device_time] == [2]
    assert summary.malformed == 2
    (orphan, orphan_error), (_short, short_error) = sink.malformed
    assert orphan == first_half.encode()
    assert "without its other packet" in str(orphan_error)
    assert "Body Composition" in str(short_error) or "2A9C" in str(short_error)


def test_a_single_packet_of_a_pair_is_refused_by_edge_decode() -> None:
    from datetime import datetime

    from drivers.models import DeviceIdentity
    from drivers.session import Value
    from firmware_profiles import ClockPolicy

    fields = ("weight_raw", "height_raw", "impedance_raw", "muscle_mass_raw", "fat_free_mass_raw")
    packet = split_packets(_record(3, **{name: 100 for name in fields}))[0]
    value = Value(
        payload=packet.encode(),
        device=DeviceIdentity(address="C0:ED:6E:00:00:0B"),
        received_at=datetime.now(UTC),
        policy=ClockPolicy.LOCAL,
        zone=UTC,
    )
    with pytest.raises(DecodeError, match="multiple-packet"):
        BodyCompositionDriver.to_reading(value)


async def test_a_second_half_is_never_merged_with_the_next_records_first_half() -> None:
    fields = {"weight_raw": 14470, "height_raw": 1750, "fat_free_mass_raw": 11070}
    fields |= {"soft_lean_mass_raw": 10420, "body_water_mass_raw": 8090, "impedance_raw": 5123}
    _a_first, a_second = split_packets(_record(4, **fields))
    b_first, b_second = split_packets(_record(5, **{**fields, "weight_raw": 14400}))
    stored = [
        EmulatedReading(raw=a_second.encode().hex()),  # A's first half was lost
        EmulatedReading(raw=b_first.encode().hex()),
        EmulatedReading(raw=b_second.encode().hex()),
    ]
    sink, summary = await _download(EmulatedDevice(PROFILE, stored=stored, live=[]))
    # B arrives whole; A's lone second half is quarantined, never glued to B's first half
    assert [r.device_time.minute for r in sink.readings if r.device_time] == [5]
    assert _values(sink.readings[0])["body-weight"] == (Decimal("72.000"), "kg")  # B's own
    assert summary.malformed == 1 and sink.malformed[0][0] == a_second.encode()
