"""The private-broker helper itself: ports, restart on the same port, persistence option."""

from __future__ import annotations

import asyncio
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.mosquitto import MosquittoBroker, Subscriber, mosquitto_broker


def publish_once(broker: MosquittoBroker, topic: str, payload: bytes) -> int:
    """Publish at QoS 1 with a bare client; returns the PUBACK reason code."""
    codes: list[int] = []
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="helper-publisher",
        protocol=mqtt.MQTTv5,
    )
    client.on_publish = lambda _c, _u, _mid, reason, _p: codes.append(reason.value)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


def test_restart_keeps_the_port_and_never_uses_1883(mosquitto: MosquittoBroker) -> None:
    port, pid = mosquitto.port, mosquitto.pid
    assert port != 1883
    mosquitto.restart()
    assert mosquitto.running
    assert mosquitto.port == port
    assert mosquitto.pid != pid
    with Subscriber(mosquitto.host, mosquitto.port, "t/#") as subscriber:
        assert publish_once(mosquitto, "t/1", b"hello") == 0x00
        assert [m.payload for m in subscriber.wait_for(1)] == [b"hello"]
    mosquitto.stop()
    assert not mosquitto.running


async def test_persistence_keeps_queued_messages_across_restart(tmp_path: Path) -> None:
    with mosquitto_broker(tmp_path / "broker", persistence=True) as broker:
        subscriber = Subscriber(broker.host, broker.port, "t/#", client_id="helper-sub")
        subscriber.start()
        subscriber.stop()  # offline, session kept by the broker
        assert publish_once(broker, "t/1", b"queued") == 0x00
        await asyncio.to_thread(broker.restart)  # SIGTERM: mosquitto saves its state

        again = Subscriber(broker.host, broker.port, "t/#", client_id="helper-sub")
        with again:
            received = await asyncio.to_thread(again.wait_for, 1)
    assert [m.payload for m in received] == [b"queued"]
    assert not broker.running
