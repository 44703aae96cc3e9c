"""MqttUplink against a real private mosquitto (tests/support/mosquitto.py): no mocks."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.uplinks.base import Envelope, OutcomeStatus, UplinkError
from gateway.uplinks.mqtt import MqttTls, MqttUplink, classify_puback
from tests.support.mosquitto import MosquittoBroker, Subscriber, make_tls_files
from tests.uplinks.fhir_samples import PATIENT, reading_body

GATEWAY = "gw-test"
READINGS = f"edge/{GATEWAY}/readings/#"
DENY_ACL = "topic readwrite edge/#\ntopic deny edge/+/readings/forbidden\n"


def envelope(envelope_id: int, *, kind: str = "weight", body: bytes | None = None) -> Envelope:
    key = f"obs-key-{envelope_id}"
    return Envelope(
        id=envelope_id,
        destination="mqtt",
        idem_key=key,
        body=reading_body(key) if body is None else body,
        kind=kind,
    )


@asynccontextmanager
async def uplink_for(
    broker: MosquittoBroker, *, connect: bool = True, **options: Any
) -> AsyncIterator[MqttUplink]:
    options.setdefault("port", broker.port)
    # most tests here have no consumer on the broker; the ones about consumers say so
    options.setdefault("require_subscriber", False)
    uplink = MqttUplink(
        "mqtt-test",
        host=broker.host,
        client_id=f"edge-test-{uuid.uuid4().hex[:8]}",
        gateway_id=GATEWAY,
        **options,
    )
    await uplink.start()
    try:
        if connect:
            async with asyncio.timeout(10):
                await uplink.wait_connected()
        yield uplink
    finally:
        await uplink.close()


async def until_disconnected(uplink: MqttUplink) -> None:
    for _ in range(500):
        if not uplink.connected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the uplink did not notice the broker going away")


async def test_delivered_on_puback_and_subscriber_gets_payload_and_identifier(
    mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway")
    batch = [envelope(1), envelope(2), envelope(3, kind="blood-pressure")]
    with Subscriber(mosquitto.host, mosquitto.port, READINGS) as subscriber:
        async with uplink_for(mosquitto) as uplink:
            outcomes = await uplink.send(batch)
        received = await asyncio.to_thread(subscriber.wait_for, 3)

    assert [(o.envelope_id, o.status) for o in outcomes] == [
        (1, OutcomeStatus.DELIVERED),
        (2, OutcomeStatus.DELIVERED),
        (3, OutcomeStatus.DELIVERED),
    ]
    by_key = {message.identifier: message for message in received}
    assert set(by_key) == {e.idem_key for e in batch}
    for sent in batch:
        message = by_key[sent.idem_key]
        assert message.payload == sent.body  # byte for byte
        assert message.topic == f"edge/{GATEWAY}/readings/{sent.kind}"
        assert message.content_type == "application/fhir+json"
        assert message.qos == 1
        assert PATIENT not in message.topic and sent.idem_key not in message.topic
    # Logs: connection state only.
    for record in caplog.records:
        text = record.getMessage()
        assert PATIENT not in text and "obs-key" not in text


async def test_batch_larger_than_the_window(mosquitto: MosquittoBroker) -> None:
    batch = [envelope(i) for i in range(40)]
    with Subscriber(mosquitto.host, mosquitto.port, READINGS) as subscriber:
        async with uplink_for(mosquitto, max_inflight=4) as uplink:
            outcomes = await uplink.send(batch)
        await asyncio.to_thread(subscriber.wait_for, 40)

    assert [o.envelope_id for o in outcomes] == list(range(40))
    assert {o.status for o in outcomes} == {OutcomeStatus.DELIVERED}
    assert subscriber.identifiers() == {e.idem_key: 1 for e in batch}


async def test_window_follows_the_broker_receive_maximum(mosquitto_factory: Any) -> None:
    broker: MosquittoBroker = mosquitto_factory(extra_config="max_inflight_messages 3")
    async with uplink_for(broker, max_inflight=20) as uplink:
        assert uplink.window == 3
        outcomes = await uplink.send([envelope(i) for i in range(12)])
    assert {o.status for o in outcomes} == {OutcomeStatus.DELIVERED}


async def test_broker_down_gives_retry_then_restart_delivers(mosquitto: MosquittoBroker) -> None:
    with Subscriber(mosquitto.host, mosquitto.port, READINGS) as subscriber:
        async with uplink_for(mosquitto) as uplink:
            mosquitto.stop()
            await until_disconnected(uplink)

            down = await uplink.send([envelope(1), envelope(2)])
            assert [o.status for o in down] == [OutcomeStatus.RETRY] * 2
            assert {o.reason for o in down} == {"broker unreachable"}

            mosquitto.start()
            async with asyncio.timeout(15):
                await uplink.wait_connected()
            assert await asyncio.to_thread(subscriber.wait_subscribed, 10)
            assert subscriber.messages == []  # nothing was sent while down

            # The outbox retries the same envelopes.
            up = await uplink.send([envelope(1), envelope(2)])
            assert [o.status for o in up] == [OutcomeStatus.DELIVERED] * 2, [o.reason for o in up]
        await asyncio.to_thread(subscriber.wait_for, 2)
    # Each reading exactly once after de-duplication by identifier.
    assert set(subscriber.identifiers()) == {"obs-key-1", "obs-key-2"}


async def test_start_does_not_block_when_the_broker_is_down(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "late-broker")  # config and port, not started
    try:
        began = time.monotonic()
        async with uplink_for(broker, connect=False) as uplink:
            assert time.monotonic() - began < 1.0
            outcomes = await uplink.send([envelope(1)])
            assert outcomes[0].status is OutcomeStatus.RETRY
            assert outcomes[0].reason == "broker unreachable"

            broker.start()  # paho keeps trying (reconnect delay 1..30 s)
            async with asyncio.timeout(15):
                await uplink.wait_connected()
            outcomes = await uplink.send([envelope(1)])
            assert outcomes[0].status is OutcomeStatus.DELIVERED
    finally:
        broker.stop()


async def test_acl_denied_topic_is_rejected_although_paho_says_published(
    mosquitto_factory: Any,
) -> None:
    broker: MosquittoBroker = mosquitto_factory(acl=DENY_ACL)

    # The trap, shown with bare paho: the denied publish reads as "published".
    acks: dict[int, int] = {}
    raw = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="raw-paho",
        protocol=mqtt.MQTTv5,
    )
    raw.on_publish = lambda _c, _u, mid, reason, _p: acks.__setitem__(mid, reason.value)
    raw.connect(broker.host, broker.port)
    raw.loop_start()
    try:
        info = raw.publish(f"edge/{GATEWAY}/readings/forbidden", b"{}", qos=1)
        info.wait_for_publish(timeout=5)
        assert info.is_published()
        assert acks[info.mid] == 0x87
    finally:
        raw.disconnect()
        raw.loop_stop()

    async with uplink_for(broker) as uplink:
        outcomes = await uplink.send([envelope(1), envelope(2, kind="forbidden"), envelope(3)])
    assert [o.status for o in outcomes] == [
        OutcomeStatus.DELIVERED,
        OutcomeStatus.REJECTED,
        OutcomeStatus.DELIVERED,
    ]
    assert "0x87" in outcomes[1].reason


async def test_no_puback_in_time_gives_retry(mosquitto: MosquittoBroker) -> None:
    with Subscriber(mosquitto.host, mosquitto.port, READINGS) as subscriber:
        async with uplink_for(mosquitto, publish_timeout=0.5) as uplink:
            mosquitto.pause()  # TCP stays up, the broker answers nothing
            try:
                began = time.monotonic()
                outcomes = await uplink.send([envelope(1), envelope(2)])
                assert time.monotonic() - began < 3
                assert [o.status for o in outcomes] == [OutcomeStatus.RETRY] * 2
                assert "no PUBACK" in outcomes[0].reason
            finally:
                mosquitto.resume()
            # The connection is still usable; the retried envelope is delivered.
            again = await uplink.send([envelope(1)])
            assert again[0].status is OutcomeStatus.DELIVERED
        await asyncio.to_thread(subscriber.wait_for, 1)
    # paho may also have delivered the timed-out copies late: duplicates only, no loss.
    assert {"obs-key-1"} <= set(subscriber.identifiers())


async def test_connection_lost_before_puback_gives_retry(mosquitto: MosquittoBroker) -> None:
    with Subscriber(mosquitto.host, mosquitto.port, READINGS) as subscriber:
        async with uplink_for(mosquitto, publish_timeout=30) as uplink:
            mosquitto.pause()
            sending = asyncio.create_task(uplink.send([envelope(1), envelope(2)]))
            await asyncio.sleep(0.2)  # both published, no PUBACK can come
            mosquitto.kill()  # the TCP connection breaks
            outcomes = await asyncio.wait_for(sending, 5)  # well before publish_timeout
            assert [o.status for o in outcomes] == [OutcomeStatus.RETRY] * 2
            assert "connection lost" in outcomes[0].reason

            mosquitto.start()
            async with asyncio.timeout(15):
                await uplink.wait_connected()
            assert await asyncio.to_thread(subscriber.wait_subscribed, 10)
            again = await uplink.send([envelope(1), envelope(2)])
            assert [o.status for o in again] == [OutcomeStatus.DELIVERED] * 2
        await asyncio.to_thread(subscriber.wait_for, 2)
    # paho may re-send its own copies after reconnecting: duplicates only, each key present.
    assert set(subscriber.identifiers()) == {"obs-key-1", "obs-key-2"}


async def test_close_while_waiting_for_puback_gives_retry(mosquitto: MosquittoBroker) -> None:
    async with uplink_for(mosquitto, publish_timeout=30) as uplink:
        mosquitto.pause()
        try:
            sending = asyncio.create_task(uplink.send([envelope(1)]))
            await asyncio.sleep(0.2)
            await uplink.close()
            outcomes = await asyncio.wait_for(sending, 5)
        finally:
            mosquitto.resume()
    assert outcomes[0].status is OutcomeStatus.RETRY


async def test_oversize_payload_rejected_without_blocking_the_connection(
    mosquitto_factory: Any,
) -> None:
    broker: MosquittoBroker = mosquitto_factory(message_size_limit=4000)
    big = envelope(1, body=reading_body("obs-key-1").replace(b'"final"', b'"' + b"f" * 5000 + b'"'))
    async with uplink_for(broker, max_payload=4000) as uplink:
        outcomes = await uplink.send([big, envelope(2)])
        assert [o.status for o in outcomes] == [OutcomeStatus.REJECTED, OutcomeStatus.DELIVERED]
        assert "max_payload" in outcomes[0].reason
        assert uplink.connected


async def test_broker_maximum_packet_size_is_honoured(mosquitto_factory: Any) -> None:
    broker: MosquittoBroker = mosquitto_factory(extra_config="max_packet_size 3000")
    big = envelope(1, body=reading_body("obs-key-1").replace(b'"final"', b'"' + b"f" * 3000 + b'"'))
    async with uplink_for(broker) as uplink:
        outcomes = await uplink.send([big, envelope(2)])
        assert [o.status for o in outcomes] == [OutcomeStatus.REJECTED, OutcomeStatus.DELIVERED]
        assert "maximum packet size" in outcomes[0].reason
        assert uplink.connected


async def test_kind_that_is_not_a_topic_level_is_rejected(mosquitto: MosquittoBroker) -> None:
    async with uplink_for(mosquitto) as uplink:
        outcomes = await uplink.send([envelope(1, kind="weight/#"), envelope(2)])
    assert [o.status for o in outcomes] == [OutcomeStatus.REJECTED, OutcomeStatus.DELIVERED]


async def test_mutual_tls_with_the_generated_ca(mosquitto_factory: Any) -> None:
    broker: MosquittoBroker = mosquitto_factory(tls=True, require_certificate=True)
    files = broker.tls_files
    assert files is not None and broker.tls_port is not None
    tls = MqttTls(ca_file=files.ca_cert, cert_file=files.client_cert, key_file=files.client_key)

    with Subscriber(broker.host, broker.tls_port, READINGS, tls=files) as subscriber:
        async with uplink_for(broker, port=broker.tls_port, tls=tls) as uplink:
            outcomes = await uplink.send([envelope(1)])
        received = await asyncio.to_thread(subscriber.wait_for, 1)
    assert outcomes[0].status is OutcomeStatus.DELIVERED
    assert [m.identifier for m in received] == ["obs-key-1"]


async def test_tls_without_client_certificate_never_connects(mosquitto_factory: Any) -> None:
    broker: MosquittoBroker = mosquitto_factory(tls=True, require_certificate=True)
    assert broker.tls_files is not None
    tls = MqttTls(ca_file=broker.tls_files.ca_cert)
    async with uplink_for(broker, port=broker.tls_port, tls=tls, connect=False) as uplink:
        await asyncio.sleep(1.0)
        assert not uplink.connected
        outcomes = await uplink.send([envelope(1)])
    assert outcomes[0].status is OutcomeStatus.RETRY


async def test_a_client_certificate_from_another_ca_never_connects(
    mosquitto_factory: Any, tmp_path: Path
) -> None:
    """A certificate the broker's CA did not sign is refused at the handshake: nothing is
    published, the readings wait (retry)."""
    broker: MosquittoBroker = mosquitto_factory(tls=True, require_certificate=True)
    assert broker.tls_files is not None and broker.tls_port is not None
    stranger = make_tls_files(tmp_path / "other-pki", client_cn="edge-test-gateway")
    tls = MqttTls(
        ca_file=broker.tls_files.ca_cert,
        cert_file=stranger.client_cert,
        key_file=stranger.client_key,
    )
    with Subscriber(broker.host, broker.tls_port, READINGS, tls=broker.tls_files) as subscriber:
        async with uplink_for(broker, port=broker.tls_port, tls=tls, connect=False) as uplink:
            await asyncio.sleep(1.0)
            assert not uplink.connected
            outcomes = await uplink.send([envelope(1)])
        await asyncio.sleep(0.3)
        assert subscriber.messages == []
    assert outcomes[0].status is OutcomeStatus.RETRY


async def test_missing_tls_files_fail_at_start(tmp_path: Path) -> None:
    uplink = MqttUplink(
        "mqtt-test",
        host="127.0.0.1",
        port=1,
        client_id="edge-test",
        gateway_id=GATEWAY,
        tls=MqttTls(ca_file=tmp_path / "missing-ca.pem"),
    )
    with pytest.raises(UplinkError):
        await uplink.start()


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (0x00, OutcomeStatus.DELIVERED),
        (0x10, OutcomeStatus.RETRY),
        (0x83, OutcomeStatus.REJECTED),
        (0x87, OutcomeStatus.REJECTED),
        (0x90, OutcomeStatus.REJECTED),
        (0x99, OutcomeStatus.REJECTED),
        (0x80, OutcomeStatus.RETRY),
        (0x91, OutcomeStatus.RETRY),
        (0x97, OutcomeStatus.RETRY),
        (0xA0, OutcomeStatus.RETRY),
    ],
)
def test_puback_reason_codes(code: int, status: OutcomeStatus) -> None:
    assert classify_puback(code)[0] is status


async def test_a_reading_nobody_subscribed_to_is_kept_until_a_consumer_is_there(
    mosquitto: MosquittoBroker,
) -> None:
    """mosquitto drops a publish that matches no subscription (PUBACK 0x10): counted as sent,
    the reading would be lost. It stays in the outbox until the bridges' subscription exists."""
    async with uplink_for(mosquitto, require_subscriber=True) as uplink:
        [alone] = await uplink.send([envelope(1)])
        assert alone.status is OutcomeStatus.RETRY and "no subscriber" in alone.reason
        with Subscriber(mosquitto.host, mosquitto.port, READINGS) as subscriber:
            assert await asyncio.to_thread(subscriber.wait_subscribed, 10)
            [heard] = await uplink.send([envelope(1)])
            assert heard.status is OutcomeStatus.DELIVERED
            await asyncio.to_thread(subscriber.wait_for, 1)
        assert subscriber.identifiers() == {"obs-key-1": 1}  # the dropped one never came


def test_no_subscriber_is_delivered_only_when_no_consumer_is_required() -> None:
    status, reason = classify_puback(0x10)
    assert status is OutcomeStatus.RETRY and "no subscriber" in reason
    assert classify_puback(0x10, require_subscriber=False)[0] is OutcomeStatus.DELIVERED


def test_constructor_refuses_wildcards_in_topics() -> None:
    for bad in ("gw/1", "gw+", "#"):
        with pytest.raises(ValueError):
            MqttUplink("m", host="h", port=1, client_id="c", gateway_id=bad)


def test_publish_properties_pack_exactly_as_paho_builds_them() -> None:
    """The template shortcut must stay byte-identical to paho's own property building (a paho
    upgrade that changed how properties are stored would show here first)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from gateway.uplinks.mqtt import publish_properties

    for identifier in ("obs-key-1", "é|ü,\\x$", "", "x" * 200, "€" * 5000):
        built = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        built.ContentType = "application/fhir+json"
        built.PayloadFormatIndicator = 1
        built.UserProperty = [("identifier", identifier)]
        assert publish_properties(identifier).pack() == built.pack()
    first, second = publish_properties("a"), publish_properties("b")
    # copies share no user property list
    assert first.UserProperty == [("identifier", "a")]
    assert second.UserProperty == [("identifier", "b")]
