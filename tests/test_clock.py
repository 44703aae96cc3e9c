"""Current Time Service over bumble's virtual link: every session reads the device clock against
the gateway's, corrects it only when the profile allows and it is off, and the readings carry the
check (PHD coincident time stamp) and the battery level once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bumble.link import LocalLink

from drivers.blood_pressure import BloodPressureDriver
from drivers.models import Reading
from firmware_profiles import FirmwareProfile, TimeService, load_profiles
from gateway.emulator import EmulatedDevice
from gateway.link.base import LinkError
from gateway.link.bumble_link import BumbleLink
from mappers.phd import map_reading
from tests.mappers.factories import GATEWAY, PATIENT, validate_entries

PROFILES = load_profiles()
DRIFTING = PROFILES["acme-bp9-clock-drift"]


class Sink:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def on_reading(self, reading: Reading) -> None:
        self.readings.append(reading)

    async def on_readings(self, readings) -> None:
        self.readings.extend(readings)

    async def on_malformed(self, device, characteristic, payload, error) -> None:
        raise AssertionError("no malformed value expected")

    async def load_cursor(self, device, stream) -> int | None:
        return None

    async def save_cursor(self, device, stream, value) -> None:
        return None


async def _session(device: EmulatedDevice, profile: FirmwareProfile) -> Sink:
    link = LocalLink()
    central = BumbleLink(local_link=link)
    await central.open()
    await device.attach(link)
    try:
        (ad,) = await central.scan(0.3, [BloodPressureDriver.SERVICE])
        profiles = {**PROFILES, profile.id: profile}
        driver = BloodPressureDriver(profiles=profiles, zone=UTC, idle_timeout=1.0)
        sink = Sink()
        await driver.run(central, ad, sink)
    finally:
        await device.detach()
        await central.close()
    return sink


async def test_a_drifting_clock_is_read_corrected_and_reported_on_every_reading() -> None:
    device = EmulatedDevice(DRIFTING)
    before = datetime.now(UTC)
    sink = await _session(device, DRIFTING)
    after = datetime.now(UTC)
    assert len(sink.readings) == 2
    check = sink.readings[0].clock
    assert check is not None and all(r.clock == check for r in sink.readings)
    assert before <= check.gateway_time <= after
    assert check.device_time is not None
    drift = check.device_time - check.gateway_time.replace(tzinfo=None)
    assert timedelta(seconds=-605) < drift < timedelta(seconds=-595)  # 10 minutes slow
    # corrected from the gateway clock (UTC zone here), and the device took it
    assert check.set_to is not None and len(device.clock_writes) == 1
    written = device.clock_writes[0]
    assert abs(written - check.set_to) < timedelta(seconds=1 / 256)  # Fractions256 resolution
    assert abs((device.wall_clock() - datetime.now(UTC).replace(tzinfo=None)).total_seconds()) < 2
    # battery once a session, on the first reading only
    assert [r.battery for r in sink.readings] == [DRIFTING.device.battery, None]


async def test_the_coincident_time_stamp_goes_with_the_readings_to_fhir() -> None:
    sink = await _session(EmulatedDevice(DRIFTING), DRIFTING)
    entries = map_reading(sink.readings[0], PATIENT, GATEWAY)
    validate_entries(entries)
    by_code = {
        e["resource"]["code"]["coding"][0]["code"]: e["resource"]
        for e in entries
        if e["resource"]["resourceType"] == "Observation"
    }
    coincident = by_code["67975"]
    check = sink.readings[0].clock
    assert check is not None and check.device_time is not None
    assert coincident["valueDateTime"].startswith(check.device_time.isoformat()[:19])
    assert "67996" in by_code  # the battery level, about the device
    panel = by_code["150020"]
    assert any(
        x["valueReference"]["reference"] == entries_url(entries, "67975")
        for x in panel["extension"]
        if "valueReference" in x
    )


def entries_url(entries: list[dict], code: str) -> str:
    for e in entries:
        resource = e["resource"]
        if (
            resource["resourceType"] == "Observation"
            and resource["code"]["coding"][0]["code"] == code
        ):
            return str(e["fullUrl"])
    raise AssertionError(f"no Observation {code}")


async def test_a_clock_within_tolerance_is_left_alone() -> None:
    emulation = DRIFTING.emulation
    assert emulation is not None
    close = DRIFTING.model_copy(
        update={"emulation": emulation.model_copy(update={"clock_offset": 5.0})}
    )
    device = EmulatedDevice(close)
    sink = await _session(device, close)
    check = sink.readings[0].clock
    assert check is not None and check.set_to is None and device.clock_writes == []


async def test_a_read_only_clock_is_measured_but_never_written() -> None:
    read_only = DRIFTING.model_copy(update={"time": TimeService(current_time=True)})
    device = EmulatedDevice(read_only)
    sink = await _session(device, read_only)
    check = sink.readings[0].clock
    assert check is not None and check.device_time is not None and check.set_to is None
    assert device.clock_writes == []


async def test_a_device_without_current_time_gets_no_clock_check() -> None:
    generic = PROFILES["generic-bps"]
    sink = await _session(EmulatedDevice(generic), generic)
    assert sink.readings and all(r.clock is None for r in sink.readings)


async def _meter_session(
    driver_profile: FirmwareProfile,
) -> tuple[EmulatedDevice, Sink, BaseException | None]:
    from drivers.glucose import GlucoseDriver

    meter = EmulatedDevice(PROFILES["acme-gm3-clock-first"])
    link = LocalLink()
    central = BumbleLink(local_link=link)
    await central.open()
    await meter.attach(link)
    try:
        (ad,) = await central.scan(0.3, [GlucoseDriver.SERVICE])
        profiles = {**PROFILES, driver_profile.id: driver_profile}
        driver = GlucoseDriver(profiles=profiles, zone=UTC, idle_timeout=1.0)
        sink = Sink()
        failure: BaseException | None = None
        try:
            await driver.run(central, ad, sink)
        except LinkError as exc:
            failure = exc
    finally:
        await meter.detach()
        await central.close()
    return meter, sink, failure


async def test_a_meter_that_wants_its_clock_set_first_gets_it_and_then_its_records() -> None:
    quirky = PROFILES["acme-gm3-clock-first"]
    meter, sink, failure = await _meter_session(quirky)
    assert failure is None
    assert len(meter.clock_writes) == 1  # set before any record access
    assert [str(r.quantities[0].value) for r in sink.readings] == ["104", "131"]
    check = sink.readings[0].clock
    assert check is not None and check.device_time is not None
    assert check.device_time.year < 2001  # the factory date it had, kept in the clock check
    assert meter.acked == [0, 1]  # both records handed out in a completed report


async def test_without_the_quirk_in_its_profile_the_meter_releases_nothing() -> None:
    unaware = PROFILES["acme-gm3-clock-first"].model_copy(
        update={"time": TimeService(current_time=True)}  # read-only: the gateway never sets it
    )
    meter, sink, failure = await _meter_session(unaware)
    assert meter.clock_writes == [] and sink.readings == []
    # the refusal ends the session as an error (logged by the daemon), not as "no records"
    assert failure is not None and "response code" in str(failure)
