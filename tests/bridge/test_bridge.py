"""The bridge in this process (its counters visible) between a real mosquitto and the real FHIR
server: batches, 503 + Retry-After, rejects and garbage to the dead-letter topic, duplicates,
the bridge's own authorisation problems, leaving for good, and the broker ACL of docs/bridge.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.bridge import _bundle_problem, build_bridge, load_bridge_config
from gateway.uplinks.base import OutcomeStatus
from gateway.uplinks.mqtt import MqttTls
from tests.bridge.helpers import (
    DEAD_LETTERS,
    GATEWAY_ID,
    SECRETS,
    all_once,
    counts_in_server,
    envelopes,
    eventually,
    gateway,
    publish,
    running,
    write_config,
)
from tests.support.mosquitto import MosquittoBroker, Subscriber, issue_client_certificate

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bridge.md"


def docs_acl() -> str:
    """The mosquitto ACL file given in docs/bridge.md (the block fenced as ```acl)."""
    text = DOCS.read_text(encoding="utf-8")
    return text.split("```acl\n", 1)[1].split("```", 1)[0]


def raw_publish(broker: MosquittoBroker, topic: str, payload: bytes, **user: str) -> None:
    """A message as a broken or foreign publisher would send it (not through MqttUplink)."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if user:
            props.UserProperty = list(user.items())
        client.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def session_present(broker: MosquittoBroker, client_id: str) -> bool:
    """Whether the broker still keeps a session for ``client_id`` (this look ends it)."""
    found: list[bool] = []
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.on_connect = lambda _c, _u, flags, _rc, _p: found.append(flags.session_present)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    try:
        deadline = time.monotonic() + 5
        while not found and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        client.disconnect()
        client.loop_stop()
    assert found, "no CONNACK"
    return found[0]


async def test_batches_go_as_one_transaction_and_are_acked_once_written(
    tmp_path, mosquitto, fhir_server
):
    config = write_config(tmp_path / "bridge.toml", mosquitto, fhir_server, linger=0.5)
    readings = envelopes(6)
    async with running(config) as bridge:
        sizes: list[int] = []
        send = bridge.uplink.send

        async def recording(batch):
            sizes.append(len(batch))
            return await send(batch)

        bridge.uplink.send = recording  # type: ignore[method-assign]
        async with gateway(mosquitto) as uplink:
            await publish(uplink, readings)
        await eventually(all_once(fhir_server, readings))
        await eventually(lambda: bridge.counts.acked == 6)
        assert sizes == [6]
        assert bridge.in_hand == 0 and bridge.unacknowledged == 0
        assert bridge.counts.delivered == 6 and bridge.counts.dead_lettered == 0


async def test_503_with_retry_after_holds_the_ack_until_the_server_recovers(
    tmp_path, mosquitto, fhir_server
):
    config = write_config(tmp_path / "bridge.toml", mosquitto, fhir_server, linger=0.3)
    readings = envelopes(3)
    async with running(config) as bridge:
        fhir_server.inject(503, count=2, retry_after=1)
        started = time.monotonic()
        async with gateway(mosquitto) as uplink:
            await publish(uplink, readings)
        await eventually(lambda: bridge.counts.retries >= 3, what="a 503")
        assert bridge.counts.acked == 0 and bridge.unacknowledged == 3
        assert bridge.counts.delivered == 0
        # (no search here: the injected faults answer every request, searches too)
        await eventually(lambda: bridge.counts.acked == 3)
        assert counts_in_server(fhir_server, readings) == [1, 1, 1]
        assert time.monotonic() - started >= 1.9  # Retry-After: 1, twice
        assert bridge.counts.retries == 6 and bridge.counts.dead_lettered == 0


async def test_a_rejected_reading_goes_to_the_dead_letter_topic_and_the_rest_through(
    tmp_path, mosquitto, fhir_server
):
    config = write_config(tmp_path / "bridge.toml", mosquitto, fhir_server, linger=0.5)
    good = envelopes(2)
    (bad,) = envelopes(1, start=2, invalid=True)  # a body weight in cm: the server refuses it
    with Subscriber(mosquitto.host, mosquitto.port, topic=DEAD_LETTERS) as dead:
        async with running(config) as bridge, gateway(mosquitto) as uplink:
            await publish(uplink, [good[0], bad, good[1]])
            await eventually(all_once(fhir_server, good))
            await eventually(lambda: bridge.counts.acked == 3)
            (letter,) = await asyncio.to_thread(dead.wait_for, 1, 5)
        assert counts_in_server(fhir_server, [bad]) == [0]
        assert letter.topic == f"edge/{GATEWAY_ID}/dead-letter/weight"
        assert letter.payload == bad.body  # the original, byte for byte
        assert letter.identifier == bad.idem_key
        reason = dict(letter.user_properties)["reason"]
        assert reason.startswith("rejected by the FHIR server: entry 400")
        assert not any(secret in reason for secret in SECRETS)
        assert bridge.counts.delivered == 2 and bridge.counts.dead_lettered == 1


async def test_garbage_and_a_missing_identifier_are_dead_lettered(tmp_path, mosquitto, fhir_server):
    config = write_config(tmp_path / "bridge.toml", mosquitto, fhir_server)
    (reading,) = envelopes(1)
    topic = f"edge/{GATEWAY_ID}/readings/weight"
    with Subscriber(mosquitto.host, mosquitto.port, topic=DEAD_LETTERS) as dead:
        async with running(config) as bridge:
            await asyncio.to_thread(raw_publish, mosquitto, topic, b"\x00not json", identifier="k1")
            await asyncio.to_thread(
                raw_publish, mosquitto, topic, b'{"resourceType": "Patient"}', identifier="k2"
            )
            await asyncio.to_thread(raw_publish, mosquitto, topic, reading.body)  # no identifier
            letters = await asyncio.to_thread(dead.wait_for, 3, 10)
            await eventually(lambda: bridge.counts.acked == 3)
    reasons = {m.identifier: dict(m.user_properties)["reason"] for m in letters}
    assert reasons == {
        "k1": "payload is not JSON",
        "k2": "payload is not a FHIR Bundle",
        None: "no identifier user property",
    }
    assert counts_in_server(fhir_server, [reading]) == [0]


async def test_a_dead_letter_nobody_would_receive_stays_unacked_until_someone_listens(
    tmp_path, mosquitto, fhir_server
):
    config = write_config(tmp_path / "bridge.toml", mosquitto, fhir_server)
    topic = f"edge/{GATEWAY_ID}/readings/weight"
    async with running(config) as bridge:
        await asyncio.to_thread(raw_publish, mosquitto, topic, b"[]", identifier="k1")
        await asyncio.sleep(1.0)  # mosquitto answers 0x10: it would drop the dead letter
        assert bridge.counts.acked == 0 and bridge.unacknowledged == 1
        with Subscriber(mosquitto.host, mosquitto.port, topic=DEAD_LETTERS) as dead:
            (letter,) = await asyncio.to_thread(dead.wait_for, 1, 10)
            await eventually(lambda: bridge.counts.acked == 1)
    assert letter.identifier == "k1" and letter.payload == b"[]"


async def test_a_reading_published_twice_is_written_once_and_both_are_acked(
    tmp_path, mosquitto, fhir_server
):
    config = write_config(tmp_path / "bridge.toml", mosquitto, fhir_server, linger=0.3)
    readings = envelopes(2)
    async with running(config) as bridge, gateway(mosquitto) as uplink:
        await publish(uplink, [readings[0], readings[0], readings[1]])
        await eventually(lambda: bridge.counts.acked == 3)
        await publish(uplink, [readings[1]])  # again, after it was written
        await eventually(lambda: bridge.counts.acked == 4)
        assert bridge.counts.delivered == 2 and bridge.counts.duplicates == 2
    assert counts_in_server(fhir_server, readings) == [1, 1]


async def test_a_server_refusing_the_bridge_is_retried_not_dead_lettered(
    tmp_path, mosquitto, fhir_server
):
    config = write_config(tmp_path / "bridge.toml", mosquitto, fhir_server)
    readings = envelopes(2)
    async with running(config) as bridge, gateway(mosquitto) as uplink:
        fhir_server.inject(403, count=2)
        await publish(uplink, readings)
        await eventually(lambda: bridge.counts.acked == 2)
        assert bridge.counts.dead_lettered == 0 and bridge.counts.retries >= 2
    assert counts_in_server(fhir_server, readings) == [1, 1]


async def test_a_server_refusing_the_request_itself_is_retried_not_dead_lettered(
    tmp_path, mosquitto, fhir_server
):
    """404/405/415 on the whole request mean a wrong base_url or a proxy in the way, not a bad
    reading: a dead letter would be acknowledged and leave the broker."""
    config = write_config(tmp_path / "bridge.toml", mosquitto, fhir_server)
    readings = envelopes(2)
    async with running(config) as bridge, gateway(mosquitto) as uplink:
        fhir_server.inject(404, count=3)
        await publish(uplink, readings)
        await eventually(lambda: bridge.counts.acked == 2)
        assert bridge.counts.dead_lettered == 0 and bridge.counts.retries >= 2
    assert counts_in_server(fhir_server, readings) == [1, 1]


async def test_a_lost_connection_gets_the_readings_again_and_acks_them_there(
    tmp_path, mosquitto_factory, fhir_server
):
    broker = mosquitto_factory(persistence=True)
    config = write_config(tmp_path / "bridge.toml", broker, fhir_server)
    readings = envelopes(4)
    async with running(config) as bridge:
        fhir_server.inject(503, count=100_000, retry_after=1)
        async with gateway(broker) as uplink:
            await publish(uplink, readings)
        await eventually(lambda: bridge.in_hand == 4)
        await asyncio.to_thread(broker.restart)  # the broker keeps the session on disk
        await eventually(lambda: bridge.counts.received == 8, what="the DUP redeliveries")
        fhir_server.inject(503, count=0)
        await eventually(lambda: bridge.counts.acked == 4)
        assert bridge.counts.delivered == 4 and bridge.counts.duplicates == 4
        assert bridge.unacknowledged == 0
    assert counts_in_server(fhir_server, readings) == [1] * 4


async def test_leaving_hands_the_share_to_the_other_bridge_and_ends_the_session(
    tmp_path, mosquitto, fhir_server
):
    first = write_config(tmp_path / "a.toml", mosquitto, fhir_server, client_id="bridge-a")
    second = write_config(tmp_path / "b.toml", mosquitto, fhir_server, client_id="bridge-b")
    early, late = envelopes(6), envelopes(6, start=6)
    leaving = build_bridge(load_bridge_config(first))
    stop = asyncio.Event()
    task = asyncio.create_task(leaving.run(stop, leave=True))
    async with running(second) as staying, gateway(mosquitto) as uplink:
        await asyncio.wait_for(leaving.subscribed.wait(), 10)
        fhir_server.inject(503, count=1000, retry_after=1)
        await publish(uplink, early)
        await eventually(lambda: leaving.in_hand == 3 and staying.in_hand == 3)
        stop.set()  # leave while holding three readings the server has not taken yet
        await asyncio.sleep(0.3)
        fhir_server.inject(503, count=0)
        await asyncio.wait_for(task, 15)
        assert leaving.counts.delivered == 3 and leaving.counts.acked == 3
        await publish(uplink, late)  # all for the bridge that stayed
        await eventually(all_once(fhir_server, early + late))
        await eventually(lambda: staying.counts.delivered == 9)
    assert not await asyncio.to_thread(session_present, mosquitto, "bridge-a")  # it left
    assert await asyncio.to_thread(session_present, mosquitto, "bridge-b")  # a plain stop


async def test_the_acl_of_the_docs_keys_on_the_certificate_identity(
    tmp_path, mosquitto_factory, fhir_server
):
    acl = docs_acl()
    broker = mosquitto_factory(
        tls=True, require_certificate=True, use_identity_as_username=True, acl=acl
    )
    files = broker.tls_files
    bridge_cert = issue_client_certificate(files, "edge-bridge-1")
    gateway_cert = issue_client_certificate(files, GATEWAY_ID)
    other_cert = issue_client_certificate(files, "0000000000000002")
    dead_cert = issue_client_certificate(files, "edge-dead-letters")
    config = write_config(
        tmp_path / "bridge.toml",
        broker,
        fhir_server,
        tls=(files.ca_cert, *bridge_cert),
        client_id="bridge-1",
    )
    (reading,) = envelopes(1)
    (bad,) = envelopes(1, start=1, invalid=True)
    dead_tls = dataclasses.replace(files, client_cert=dead_cert[0], client_key=dead_cert[1])
    assert broker.tls_port is not None
    with Subscriber(broker.host, broker.tls_port, topic=DEAD_LETTERS, tls=dead_tls) as dead:
        async with running(config) as bridge:
            mine = MqttTls(files.ca_cert, *gateway_cert)
            async with gateway(broker, tls=mine) as uplink:
                await publish(uplink, [reading, bad])
            # a gateway cannot write another gateway's topic, whatever its client id
            async with gateway(
                broker, tls=MqttTls(files.ca_cert, *other_cert), gateway_id=GATEWAY_ID
            ) as spoofer:
                (outcome,) = await spoofer.send(envelopes(1, start=2))
                assert outcome.status is OutcomeStatus.REJECTED and "0x87" in outcome.reason
            await eventually(all_once(fhir_server, [reading]))
            (letter,) = await asyncio.to_thread(dead.wait_for, 1, 10)
            await eventually(lambda: bridge.counts.acked == 2)
    assert letter.identifier == bad.idem_key
    assert counts_in_server(fhir_server, envelopes(1, start=2)) == [0]


def test_payload_checks_name_the_problem_without_values():
    bundle = orjson.loads(envelopes(1)[0].body)
    assert _bundle_problem(orjson.dumps(bundle)) is None
    assert _bundle_problem(orjson.dumps({**bundle, "type": "batch"})) == (
        "payload is not a transaction Bundle"
    )
    assert _bundle_problem(orjson.dumps({**bundle, "entry": []})) == "the Bundle has no entries"
    assert _bundle_problem(orjson.dumps({**bundle, "entry": [{"request": {}}]})) == (
        "a Bundle entry has no resource"
    )
