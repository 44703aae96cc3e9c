"""Default deny, grant releases held readings, revocation stops sends; bad input is contained."""

from __future__ import annotations

import asyncio

from firmware_profiles import EmulatedReading, load_profiles
from gateway.consent import ConsentStore
from gateway.daemon import Daemon
from tests.e2e.helpers import (
    PATIENT,
    config,
    grant,
    observations,
    outbox_status,
    run_until_idle,
    wait_for,
)


async def test_without_consent_nothing_leaves_and_grant_releases_the_held_readings(tmp_path):
    cfg = config(tmp_path)
    daemon = Daemon(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await wait_for(lambda: daemon.emulators and all(e.done.is_set() for e in daemon.emulators))

        async def held() -> bool:
            status = await outbox_status(cfg)
            return status.by_destination.get("record", {}).get("consent_missing") == 3

        await wait_for(held)
        await asyncio.sleep(0.5)  # several drain cycles: still nothing may leave
        record = cfg.gateway.data_dir / "record.sqlite"
        assert not record.exists() or await observations(cfg) == []

        grant(cfg)  # as `edge consent grant` does, from another connection
        # 3 readings x (weight, height, bmi), and the session's battery level (device status)
        await wait_for(lambda: _count(cfg, 10))
        status = await outbox_status(cfg)
        assert status.by_destination["record"] == {"done": 3}
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _count(cfg, n: int) -> bool:
    record = cfg.gateway.data_dir / "record.sqlite"
    return record.exists() and len(await observations(cfg)) == n


async def test_revocation_is_checked_again_right_before_the_send(tmp_path):
    cfg = config(tmp_path)
    grant(cfg)
    daemon = Daemon(cfg)
    await daemon.outbox.open()
    # queue a reading while consent is granted (the first check passes) ...
    await daemon.on_reading(_one_reading())
    status = await daemon.outbox.status()
    assert status.by_destination["record"] == {"pending": 1}
    # ... then the patient revokes before the drain loop sends it
    store = ConsentStore(cfg.gateway.data_dir / "consent.sqlite")
    assert store.revoke(PATIENT, "record") == 1
    store.close()
    stop = asyncio.Event()
    drain = asyncio.create_task(daemon.drain_loop("record", stop))
    await wait_for(
        lambda: _state(daemon, "consent_missing"),
    )
    stop.set()
    await asyncio.wait_for(drain, 5)
    await daemon.outbox.close()
    record = cfg.gateway.data_dir / "record.sqlite"
    assert not record.exists() or await observations(cfg) == []


async def _state(daemon: Daemon, state: str) -> bool:
    status = await daemon.outbox.status()
    return status.by_destination.get("record", {}).get(state) == 1


def _one_reading():
    from datetime import UTC, datetime
    from decimal import Decimal

    from drivers.models import DeviceIdentity, Quantity, Reading, TimeSource

    now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    return Reading(
        kind="weight",
        characteristic="2A9D",
        device=DeviceIdentity(address="C0:ED:6E:00:00:01", system_id="001B2CFFFE3D4E5F"),
        quantities=(Quantity(name="body-weight", value=Decimal("70.000"), unit="kg"),),
        device_time=now.replace(tzinfo=None),
        effective_time=now,
        time_source=TimeSource.DEVICE_UTC,
        received_at=now,
        user_index=1,
        raw="06" + "00" * 10,
    )


async def test_a_malformed_indication_is_quarantined_and_the_daemon_keeps_going(tmp_path):
    profiles = load_profiles()
    generic = profiles["generic-wss"]
    assert generic.emulation is not None
    good = generic.emulation.stored
    # flags say "time stamp present" but the value stops after the weight: truncated indication
    bad = EmulatedReading(raw="0698300000")
    emulation = generic.emulation.model_copy(update={"stored": [good[0], bad, good[1]], "live": []})
    profiles["generic-wss"] = generic.model_copy(update={"emulation": emulation})
    cfg = config(tmp_path)
    grant(cfg)
    daemon, _ = await run_until_idle(cfg, profiles=profiles)

    assert daemon.emulators[0].acked == [0, 1, 2]  # the bad one was taken off the device too
    status = await outbox_status(cfg)
    assert len(status.quarantined) == 1
    q = status.quarantined[0]
    assert q["source"] == "device" and q["characteristic"] == "2A9D"
    assert "Time Stamp" in q["reason"] or "time" in q["reason"].lower()
    assert "offset" in q["reason"]
    weights = await observations(cfg, patient=PATIENT, code="29463-7")
    assert len(weights) == 2  # the readings around it still arrived


async def test_a_reading_that_cannot_be_mapped_is_kept_quarantined_and_blocks_nothing(tmp_path):
    from dataclasses import replace

    from drivers.models import Quantity

    cfg = config(tmp_path)
    grant(cfg)
    daemon = Daemon(cfg)
    await daemon.outbox.open()
    try:
        good = _one_reading()
        # a unit the bodyweight profile cannot carry (e.g. a buggy firmware profile)
        bad = replace(
            good,
            quantities=(Quantity(name="body-weight", value=good.quantities[0].value, unit="st"),),
            device_time=good.device_time.replace(minute=1),
        )
        await daemon.on_reading(bad)  # must not raise: the indication gets confirmed
        await daemon.on_reading(good)
        status = await daemon.outbox.status()
        assert status.readings == 2
        assert [q["source"] for q in status.quarantined] == ["mapping"]
        assert "cannot map to FHIR" in status.quarantined[0]["reason"]
        assert status.by_destination["record"] == {"pending": 1}
    finally:
        await daemon.outbox.close()


async def test_a_record_download_is_stored_in_few_commits_and_a_bad_record_blocks_nothing(tmp_path):
    from dataclasses import replace

    from drivers.models import Quantity

    cfg = config(tmp_path)
    grant(cfg)
    daemon = Daemon(cfg)
    await daemon.outbox.open()
    try:
        good = _one_reading()
        readings = [
            replace(good, device_time=good.device_time.replace(minute=minute))
            for minute in range(40)
        ]
        # one record of the download that cannot be mapped (a unit the profile cannot carry)
        readings[7] = replace(
            readings[7],
            quantities=(Quantity(name="body-weight", value=good.quantities[0].value, unit="st"),),
        )
        await daemon.on_readings(readings)
        await daemon.on_readings(readings[:5])  # downloaded again: deduplicated
        status = await daemon.outbox.status()
        assert status.readings == 40
        assert status.by_destination["record"] == {"pending": 39}
        assert [q["source"] for q in status.quarantined] == ["mapping"]
        assert daemon.outbox.commits < 10  # group commit: not one fsync per record
    finally:
        await daemon.outbox.close()


async def test_a_store_failure_in_a_download_fails_it_but_the_others_are_finished(tmp_path):
    import sqlite3
    from dataclasses import replace

    from gateway.daemon import ReadingEvent

    cfg = config(tmp_path)
    grant(cfg)
    events: list[object] = []
    daemon = Daemon(cfg, on_event=events.append)
    await daemon.outbox.open()
    try:
        good = _one_reading()
        readings = [replace(good, device_time=good.device_time.replace(minute=m)) for m in range(5)]
        prepare = daemon._prepare

        def broken(reading):  # the third reading's row cannot be written (NOT NULL violated)
            prepared = prepare(reading)
            if reading is readings[2]:
                _key, *rest, envelopes = prepared.item
                return replace(prepared, item=(None, *rest, envelopes))
            return prepared

        daemon._prepare = broken  # type: ignore[method-assign]
        try:
            await daemon.on_readings(readings)
        except sqlite3.IntegrityError:
            pass
        else:
            raise AssertionError("the failed store must fail the download (no cursor moves)")
        stored = [e for e in events if isinstance(e, ReadingEvent)]
        assert len(stored) == 4  # the other four were stored and reported
        assert (await daemon.outbox.status()).readings == 4
    finally:
        await daemon.outbox.close()
