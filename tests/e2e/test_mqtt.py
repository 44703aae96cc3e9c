"""Emulated scale -> daemon -> a real mosquitto started by the test."""

from __future__ import annotations

import asyncio

from gateway.daemon import Daemon
from tests.e2e.helpers import config, grant, observations, outbox_status, run_until_idle, wait_for
from tests.support.mosquitto import Subscriber


def _mqtt(port: int, **extra: object) -> dict[str, object]:
    return {"type": "mqtt", "name": "broker", "host": "127.0.0.1", "port": port, **extra}


async def _identifiers_in_record(cfg) -> set[str]:
    return {o["identifier"][0]["value"] for o in await observations(cfg, code="29463-7")}


async def test_each_reading_reaches_a_tls_subscriber_exactly_once(tmp_path, mosquitto_factory):
    broker = mosquitto_factory(tls=True)
    files = broker.tls_files
    cfg = config(
        tmp_path,
        destinations=[
            {"type": "local", "name": "record"},
            _mqtt(
                broker.tls_port,
                ca_file=str(files.ca_cert),
                cert_file=str(files.client_cert),
                key_file=str(files.client_key),
            ),
        ],
    )
    grant(cfg, "record")
    grant(cfg, "broker")
    with Subscriber("127.0.0.1", broker.tls_port, topic="edge/#", tls=files) as sub:
        await run_until_idle(cfg)
        expected = await _identifiers_in_record(cfg)
        assert len(expected) == 3
        await asyncio.to_thread(sub.wait_for, 3, 10)
        counts = sub.identifiers()
        assert set(counts) == expected  # the identifier travels as a user property ...
        assert all(n == 1 for n in counts.values())
        for message in sub.messages:  # ... and in the payload, with no patient data in the topic
            assert message.identifier is not None
            assert message.identifier.encode() in message.payload
            assert "1850175000042" not in message.topic
            assert message.topic.startswith("edge/") and message.topic.endswith("/readings/weight")
    status = await outbox_status(cfg)
    assert status.by_destination["broker"] == {"done": 3}


async def test_with_the_broker_down_readings_wait_and_arrive_after_restart(tmp_path, mosquitto):
    cfg = config(
        tmp_path,
        destinations=[
            {"type": "local", "name": "record"},
            _mqtt(mosquitto.port, allow_plaintext=True),
        ],
    )
    grant(cfg, "record")
    grant(cfg, "broker")
    sub = Subscriber("127.0.0.1", mosquitto.port, topic="edge/#").start()
    try:
        mosquitto.stop()
        daemon = Daemon(cfg)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            await wait_for(lambda: daemon.emulators and daemon.emulators[0].done.is_set())

            async def record_has_all() -> bool:
                return (cfg.gateway.data_dir / "record.sqlite").exists() and len(
                    await _identifiers_in_record(cfg)
                ) == 3

            await wait_for(record_has_all)
            await asyncio.sleep(1.0)
            status = await daemon.outbox.status()
            assert status.by_destination["broker"] == {"pending": 3}  # queued, not lost
            assert sub.messages == []

            mosquitto.restart()
            assert await asyncio.to_thread(sub.wait_subscribed, 10)

            async def delivered() -> bool:
                s = await daemon.outbox.status()
                return s.by_destination["broker"] == {"done": 3}

            await wait_for(delivered, timeout=45)
            await asyncio.to_thread(sub.wait_for, 3, 10)
            assert set(sub.identifiers()) == await _identifiers_in_record(cfg)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    finally:
        sub.stop()


async def test_without_consent_nothing_reaches_the_broker_until_granted(tmp_path, mosquitto):
    cfg = config(
        tmp_path,
        destinations=[
            {"type": "local", "name": "record"},
            _mqtt(mosquitto.port, allow_plaintext=True),
        ],
    )
    grant(cfg, "record")  # the record is permitted, the broker is not
    with Subscriber("127.0.0.1", mosquitto.port, topic="#") as sub:
        daemon = Daemon(cfg)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            await wait_for(lambda: daemon.emulators)  # started: outbox open, link up

            async def record_done() -> bool:
                s = await daemon.outbox.status()
                return s.by_destination.get("record") == {"done": 3}

            await wait_for(record_done)
            await asyncio.sleep(1.0)
            status = await daemon.outbox.status()
            assert status.by_destination["broker"] == {"consent_missing": 3}
            assert sub.messages == []  # a subscriber on '#' saw nothing at all

            grant(cfg, "broker")

            async def broker_done() -> bool:
                s = await daemon.outbox.status()
                return s.by_destination.get("broker") == {"done": 3}

            await wait_for(broker_done)
            await asyncio.to_thread(sub.wait_for, 3, 10)
            assert len(set(sub.identifiers())) == 3
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
