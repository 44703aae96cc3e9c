"""The glucose driver against emulated meters over bumble's virtual link: pairing, RACP, gaps.

Everything BLE here is real (bumble host stacks on both sides, SMP pairing, encrypted link, ATT
notifications and indications); only the sink standing in for the daemon is a test double.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.glucose import STREAM, GlucoseDriver
from drivers.models import DeviceIdentity, Reading
from firmware_profiles import FirmwareProfile, load_profiles
from gateway.emulator import EmulatedDevice
from gateway.link import AttError, LinkError, PairingError, PairingPolicy
from gateway.link.bumble_link import BumbleLink, new_local_link

PROFILES = load_profiles()
METER = PROFILES["generic-gls"]


class Sink:
    """The daemon's side of the driver contract, in memory."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.malformed: list[object] = []
        self.cursors: dict[tuple[str, str], int] = {}

    async def on_reading(self, reading: Reading) -> None:
        self.readings.append(reading)

    async def on_readings(self, readings) -> None:
        self.readings.extend(readings)

    async def on_malformed(self, device, characteristic, payload, error) -> None:
        self.malformed.append(error)

    async def load_cursor(self, device: DeviceIdentity, stream: str) -> int | None:
        return self.cursors.get((device.key, stream))

    async def save_cursor(self, device: DeviceIdentity, stream: str, value: int) -> None:
        self.cursors[(device.key, stream)] = value


class Bench:
    """One virtual radio with a meter on it and a gateway link that can be reopened."""

    def __init__(self, profile: FirmwareProfile, tmp: Path, **meter: object) -> None:
        self.radio = new_local_link()
        self.meter = EmulatedDevice(profile, **meter)  # type: ignore[arg-type]
        self.bonds = tmp / "bonds.json"
        self.links: list[BumbleLink] = []

    async def __aenter__(self) -> Bench:
        await self.meter.attach(self.radio)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for link in self.links:
            await link.close()
        await self.meter.detach()

    async def gateway(self, passkeys: dict[str, int] | None = None) -> BumbleLink:
        link = BumbleLink(
            local_link=self.radio,
            pairing=PairingPolicy(bonds=self.bonds, passkeys=passkeys or {}),
        )
        await link.open()
        self.links.append(link)
        return link

    async def session(self, link: BumbleLink, sink: Sink) -> object:
        ads = await link.scan(0.3, [GlucoseDriver.SERVICE])
        assert ads, "the meter does not advertise"
        driver = GlucoseDriver(profiles=PROFILES, zone=UTC, idle_timeout=1.0)
        return await driver.run(link, ads[0], sink)


def _values(sink: Sink) -> list[tuple[int | None, str, str]]:
    return [
        (r.sequence, str(r.quantities[0].value or r.quantities[0].absent), r.quantities[0].unit)
        for r in sink.readings
    ]


async def test_a_download_pairs_fetches_lost_records_again_and_skips_control_solution(tmp_path):
    async with Bench(METER, tmp_path) as bench:
        link = await bench.gateway()
        sink = Sink()
        summary = await bench.session(link, sink)
        assert bench.meter.pairings == 1
        # sequence 3 is a control-solution check; 1 and 5 were lost once on the air
        assert _values(sink) == [
            (0, "111", "mg/dL"),
            (1, "142", "mg/dL"),
            (2, "98", "mg/dL"),
            (4, "nan", "mg/dL"),
            (5, "156", "mg/dL"),
        ]
        assert summary.skipped == 1 and not sink.malformed  # type: ignore[attr-defined]
        requests = [bytes(r).hex() for r in bench.meter.memory.procedures]  # type: ignore[union-attr]
        assert requests == [
            "0401",  # how many records? 6
            "010301" + "0000",  # all from sequence 0: 0, 2, 3, 4 arrive (1 and 5 lost)
            "010401" + "0100" + "0100",  # the hole at 1, asked for by itself
            "010301" + "0500",  # only the count shows the newest (5) went missing
        ]
        assert sink.cursors == {(bench.meter.profile.device.system_id or "", STREAM): 6}


async def test_records_carry_context_status_and_the_device_clock(tmp_path):
    async with Bench(METER, tmp_path) as bench:
        sink = Sink()
        await bench.session(await bench.gateway(), sink)
    first, second, third, nan, last = sink.readings
    assert first.context == (
        ("specimen", "capillary-whole-blood"),
        ("sample-location", "finger"),
        ("meal", "fasting"),
        ("tester", "self"),
        ("health", "none"),
    )
    assert second.context[-1] == ("meal", "postprandial")
    assert third.context[0] == ("specimen", "capillary-plasma")
    assert third.device_time == datetime(2026, 11, 22, 7, 30, 40)  # base time + 2 min offset
    assert nan.quantities[0].value is None and nan.status == ("sample-size-insufficient",)
    assert last.status == ("time-fault",)
    assert first.quantities[0].value == Decimal("111")
    assert first.kind == "blood-glucose" and first.characteristic == "2A18"


async def test_the_next_download_asks_only_for_new_records(tmp_path):
    async with Bench(METER, tmp_path) as bench:
        link = await bench.gateway()
        sink = Sink()
        await bench.session(link, sink)
        again = Sink()
        again.cursors = dict(sink.cursors)
        bench.meter.done.clear()
        await bench.meter._advertise_if_needed()
        await bench.session(link, again)
        assert again.readings == []
        requests = [bytes(r).hex() for r in bench.meter.memory.procedures]  # type: ignore[union-attr]
        assert requests[-2:] == [
            "040301" + "0600",  # how many from sequence 6 on? none
            "0106",  # the newest is 5, just below the cursor: no reset, nothing to fetch
        ]
        assert bench.meter.pairings == 1  # the bond was reused


async def test_the_bond_outlives_the_gateway_process(tmp_path):
    async with Bench(METER, tmp_path) as bench:
        first = await bench.gateway()
        await bench.session(first, Sink())
        await first.close()
        bench.links.remove(first)
        assert bench.bonds.exists() and bench.bonds.stat().st_mode & 0o077 == 0
        bench.meter.done.clear()
        await bench.meter._advertise_if_needed()
        restarted = await bench.gateway()  # a new host stack, reading the same bond file
        sink = Sink()
        await bench.session(restarted, sink)
        assert bench.meter.pairings == 1 and len(sink.readings) == 5


async def test_the_meter_refuses_an_unencrypted_link(tmp_path):
    async with Bench(METER, tmp_path) as bench:
        link = await bench.gateway()
        ads = await link.scan(0.3, [GlucoseDriver.SERVICE])
        connection = await link.connect(ads[0].address)
        try:
            await connection.discover()
            with pytest.raises(AttError) as refused:
                await connection.subscribe("2A52", _ignore)
            assert refused.value.needs_security
            assert not connection.is_encrypted
            assert await connection.secure() is True
            assert connection.is_encrypted
            await connection.subscribe("2A52", _ignore)  # now accepted
        finally:
            await connection.disconnect()


def _passkey_meter() -> FirmwareProfile:
    data = METER.model_dump()
    data["id"] = "test-passkey"
    data["security"] = {"pairing": "passkey", "passkey": 472913}
    return FirmwareProfile.model_validate(data)


async def test_passkey_pairing_with_the_passkey_the_meter_displays(tmp_path):
    profile = _passkey_meter()
    async with Bench(profile, tmp_path) as bench:
        link = await bench.gateway(passkeys={bench.meter.address: 472913})
        sink = Sink()
        await bench.session(link, sink)
        assert len(sink.readings) == 5 and bench.meter.pairings == 1


async def test_a_wrong_passkey_fails_pairing_and_nothing_is_read(tmp_path):
    profile = _passkey_meter()
    async with Bench(profile, tmp_path) as bench:
        link = await bench.gateway(passkeys={bench.meter.address: 111111})
        sink = Sink()
        with pytest.raises(PairingError):
            await bench.session(link, sink)
        assert sink.readings == [] and bench.meter.memory.procedures == []  # type: ignore[union-attr]


async def test_just_works_is_refused_by_a_meter_that_shows_a_passkey(tmp_path):
    profile = _passkey_meter()
    async with Bench(profile, tmp_path) as bench:
        link = await bench.gateway()  # no passkey configured for it
        sink = Sink()
        with pytest.raises(LinkError):  # the meter hangs up on an unauthenticated bond
            await bench.session(link, sink)
        assert sink.readings == [] and bench.meter.memory.procedures == []  # type: ignore[union-attr]


async def _ignore(_payload: bytes) -> None:
    return None


async def test_a_meter_that_forgot_the_bond_is_paired_again(tmp_path):
    async with Bench(METER, tmp_path) as bench:
        link = await bench.gateway()
        await bench.session(link, Sink())
    # batteries out: same meter, empty key store; the gateway still holds the old bond
    async with Bench(METER, tmp_path) as bench:
        bench.radio = bench.radio
        link = await bench.gateway()
        sink = Sink()
        await bench.session(link, sink)
        assert bench.meter.pairings == 1 and len(sink.readings) == 5


async def test_the_acme_gm7_pairs_by_passkey_and_reports_mmol_per_litre_unconverted(tmp_path):
    profile = PROFILES["acme-gm7-passkey"]
    async with Bench(profile, tmp_path) as bench:
        link = await bench.gateway(passkeys={bench.meter.address: 472913})
        sink = Sink()
        await bench.session(link, sink)
    assert [(str(r.quantities[0].value), r.quantities[0].unit) for r in sink.readings] == [
        ("6.2", "mmol/L"),
        ("8.9", "mmol/L"),
    ]
    assert sink.readings[0].device.profile_id == "acme-gm7-passkey"
