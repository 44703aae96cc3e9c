"""Every firmware profile is real: it loads, the driver recognises its emulated device over the
bumble link and decodes every reading it sends; docs/devices.md is generated from them."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import pytest
from bumble.link import LocalLink

from drivers.registry import BY_PROFILE_KIND
from firmware_profiles import ProfileError, load_profile, load_profiles
from firmware_profiles.catalog import DOC, render
from gateway.emulator import EmulatedDevice
from gateway.link import PairingPolicy
from gateway.link.bumble_link import BumbleLink

PROFILES = load_profiles()


class Collect:
    def __init__(self) -> None:
        self.readings: list = []
        self.malformed: list = []

    async def on_reading(self, reading) -> None:
        self.readings.append(reading)

    async def on_readings(self, readings) -> None:
        self.readings.extend(readings)

    async def on_malformed(self, device, characteristic, payload, error) -> None:
        self.malformed.append(error)

    async def load_cursor(self, device, stream) -> int | None:
        return None

    async def save_cursor(self, device, stream, value) -> None:
        return None


def _patient_data(reading) -> bool:
    """Control-solution results are meter checks: drivers must not pass them on."""
    return not (reading.sample_type == 10 or reading.sample_location == 4)


@pytest.mark.parametrize("profile_id", sorted(PROFILES))
async def test_each_profile_is_emulated_and_recognised(profile_id):
    profile = PROFILES[profile_id]
    assert profile.emulation is not None, f"{profile_id} has no emulation section (no fixture)"
    emulated = [*profile.emulation.stored, *profile.emulation.live]
    sent = len(emulated)
    assert sent > 0, f"{profile_id} emulates no reading"
    patient_data = sum(1 for r in emulated if _patient_data(r))
    link = LocalLink()
    security = profile.security
    passkeys = {profile.emulation.address: security.passkey} if security.passkey is not None else {}
    central = BumbleLink(local_link=link, pairing=PairingPolicy(passkeys=passkeys))
    await central.open()
    scale = EmulatedDevice(profile)
    await scale.attach(link)
    try:
        driver_class = BY_PROFILE_KIND[profile.kind]
        # a multi-user (UDS) device releases one consented user a connection: one session each
        codes = {profile.emulation.address: {u.index: u.consent_code for u in profile.device.users}}
        driver = driver_class(profiles=PROFILES, zone=UTC, idle_timeout=1.0, consent_codes=codes)
        sink = Collect()
        for _ in range(max(1, len(profile.device.users))):
            ads = await central.scan(0.3, [driver_class.SERVICE])
            assert [a.address for a in ads] == [profile.emulation.address]
            summary = await driver.run(central, ads[0], sink)
    finally:
        await scale.detach()
        await central.close()
    assert summary.device is not None and summary.device.profile_id == profile_id
    assert len(sink.readings) == patient_data and not sink.malformed
    assert summary.skipped == sent - patient_data
    assert sorted(scale.acked) == list(range(sent))  # per user, in order, for UDS devices
    assert summary.battery == profile.device.battery
    expected_sysid = profile.device.system_id
    assert summary.device.system_id == expected_sysid


def test_the_device_page_is_generated_from_the_profiles():
    assert DOC.read_text(encoding="utf-8") == render(PROFILES), (
        "docs/devices.md is stale: run python -m firmware_profiles.catalog"
    )


def test_an_unknown_key_in_a_profile_is_refused_with_its_name(tmp_path: Path):
    bad = tmp_path / "x.yaml"
    text = (
        Path(__file__).resolve().parents[1] / "firmware_profiles" / "generic-wss.yaml"
    ).read_text()
    bad.write_text(text.replace("clock: local", "clock: local\ncolour: blue"), encoding="utf-8")
    with pytest.raises(ProfileError, match="colour"):
        load_profile(bad)


def test_profiles_match_only_their_own_model():
    from firmware_profiles import match_profile

    assert (
        match_profile(PROFILES.values(), manufacturer="A&D", model="UC-352BLE", name=None).id
        == "and-uc352ble"
    )
    assert (
        match_profile(PROFILES.values(), manufacturer="a&d", model="uc-352plus", name=None).id
        == "and-uc352ble"
    )
    assert (
        match_profile(PROFILES.values(), manufacturer="ACME Health", model="BS-999", name=None)
        is None
    )
    assert (
        match_profile(PROFILES.values(), manufacturer=None, model=None, name="edge-scale") is None
    )


def test_corrections_touch_only_the_named_zero_quantities():
    from dataclasses import replace
    from datetime import datetime
    from decimal import Decimal

    from drivers.models import Absent, DeviceIdentity, Quantity, Reading, TimeSource
    from drivers.session import apply_corrections
    from firmware_profiles import Corrections

    now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    reading = Reading(
        kind="blood-pressure",
        characteristic="2A35",
        device=DeviceIdentity(address="C0:ED:6E:00:00:08"),
        quantities=(
            Quantity(name="systolic", value=Decimal("0"), unit="mm[Hg]"),
            Quantity(name="mean-arterial-pressure", value=Decimal("0"), unit="mm[Hg]"),
        ),
        device_time=None,
        effective_time=now,
        time_source=TimeSource.GATEWAY_RECEIPT,
        received_at=now,
        user_index=None,
        raw="00",
    )
    fixes = Corrections(zero_is_unmeasured=["mean-arterial-pressure"])
    fixed = apply_corrections(reading, fixes, "p")
    assert fixed.quantities[0] == reading.quantities[0]  # systolic 0 is not named: untouched
    assert fixed.quantities[1].value is None and fixed.quantities[1].absent is Absent.NAN
    assert fixed.corrections == ("mean-arterial-pressure: 0 read as not measured (p)",)
    measured = replace(
        reading,
        quantities=(Quantity(name="mean-arterial-pressure", value=Decimal("93"), unit="mm[Hg]"),),
    )
    assert apply_corrections(measured, fixes, "p") is measured  # a real value is never touched


def test_a_reading_of_another_device_kind_is_refused_with_its_place(tmp_path: Path):
    bad = tmp_path / "x.yaml"
    text = (
        Path(__file__).resolve().parents[1] / "firmware_profiles" / "generic-bps.yaml"
    ).read_text()
    bad.write_text(text.replace('pulse: "64",', 'pulse: "64", weight: "70",'), encoding="utf-8")
    with pytest.raises(ProfileError, match=r"emulation\.stored\.0.*another device kind"):
        load_profile(bad)
