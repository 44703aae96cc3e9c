"""User Data Service over bumble's virtual link: the gateway unlocks one bound user a connection
with that user's consent code; a wrong or missing code releases nothing; nothing is guessed."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal

import pytest
from bumble.link import LocalLink

from drivers.models import Reading
from drivers.session import SessionSummary
from drivers.weight_scale import WeightScaleDriver
from firmware_profiles import load_profiles
from gateway.config import parse_config
from gateway.emulator import EmulatedDevice
from gateway.errors import ConfigError
from gateway.link.bumble_link import BumbleLink

PROFILES = load_profiles()
SCALE = PROFILES["acme-bf7-uds"]
SYSID = "00-1B-2C-FF-FE-3D-4E-72"


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


async def _sessions(
    codes: dict[str, dict[int, int]], connections: int
) -> tuple[EmulatedDevice, Sink, list[SessionSummary]]:
    link = LocalLink()
    central = BumbleLink(local_link=link)
    await central.open()
    scale = EmulatedDevice(SCALE)
    await scale.attach(link)
    driver = WeightScaleDriver(profiles=PROFILES, zone=UTC, idle_timeout=1.0, consent_codes=codes)
    sink, summaries = Sink(), []
    try:
        for _ in range(connections):
            ads = await central.scan(0.3, [WeightScaleDriver.SERVICE])
            if not ads:
                break
            summaries.append(await driver.run(central, ads[0], sink))
    finally:
        await scale.detach()
        await central.close()
    return scale, sink, summaries


def _weights(sink: Sink) -> list[tuple[int | None, Decimal | None]]:
    return [(r.user_index, r.quantities[0].value) for r in sink.readings]


async def test_each_bound_user_is_unlocked_in_turn_and_gets_only_their_readings() -> None:
    scale, sink, _ = await _sessions({SYSID: {1: 1234, 2: 5678}}, connections=3)
    assert scale.consents == [(1, True), (2, True)]
    assert _weights(sink) == [
        (1, Decimal("81.200")),
        (1, Decimal("81.000")),  # first connection: user 1's memory
        (2, Decimal("64.550")),  # second connection: user 2's
    ]
    assert scale.done.is_set()  # nothing left: the scale stopped advertising


async def test_a_wrong_consent_code_releases_nothing() -> None:
    scale, sink, summaries = await _sessions({SYSID: {1: 9999}}, connections=1)
    assert scale.consents == [(1, False)]
    assert sink.readings == []
    assert any("unlocked" in e for e in summaries[0].errors)


async def test_an_unbound_user_is_never_unlocked() -> None:
    # only user 2 is bound: user 1's memory stays on the scale, nothing is guessed
    scale, sink, _ = await _sessions({SYSID: {2: 5678}}, connections=2)
    assert {index for index, _ in scale.consents} == {2}
    assert {r.user_index for r in sink.readings} == {2}
    assert len(scale.pending) == 2 and not scale.done.is_set()


async def test_no_consent_code_at_all_means_no_consent_written() -> None:
    scale, sink, summaries = await _sessions({}, connections=1)
    assert scale.consents == [] and sink.readings == []
    assert summaries[0].errors


def test_a_consent_code_belongs_to_a_user_index() -> None:
    with pytest.raises(ConfigError, match="consent_code"):
        parse_config({"bindings": [{"device": SYSID, "patient": "urn:x|1", "consent_code": 12}]})


def test_a_multi_user_device_cannot_also_be_bound_as_a_whole() -> None:
    with pytest.raises(ConfigError, match="bind each user"):
        parse_config(
            {
                "link": {"emulate": ["acme-bf7-uds"]},
                "bindings": [
                    {"device": SYSID, "patient": "urn:x|1", "user_index": 1, "consent_code": 12},
                    {"device": SYSID.replace("-", ":"), "patient": "urn:x|2"},
                ],
            }
        )


async def test_readings_without_a_user_id_belong_to_the_consented_user() -> None:
    data = SCALE.model_dump()
    for reading in data["emulation"]["stored"]:
        if reading["user"] == 2:
            reading["user"] = None  # this firmware omits the User ID field...
    data["emulation"]["stored"] = [r for r in data["emulation"]["stored"] if r["user"] is None]
    data["device"]["users"] = [{"index": 2, "consent_code": 5678}]
    profile = type(SCALE).model_validate(data)
    link = LocalLink()
    central = BumbleLink(local_link=link)
    await central.open()
    scale = EmulatedDevice(profile)
    scale.users = {2: 5678}
    # ...and releases them once user 2 consented (the emulator keys them on no user)
    scale._releasable = lambda entry: scale.current_user == 2  # type: ignore[method-assign]
    await scale.attach(link)
    codes = {SYSID: {2: 5678}}
    driver = WeightScaleDriver(profiles=PROFILES, zone=UTC, idle_timeout=1.0, consent_codes=codes)
    sink = Sink()
    try:
        (ad,) = await central.scan(0.3, [WeightScaleDriver.SERVICE])
        await driver.run(central, ad, sink)
    finally:
        await scale.detach()
        await central.close()
    assert [r.user_index for r in sink.readings] == [2]  # the consented user, never None
