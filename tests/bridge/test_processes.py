"""Real ``edge bridge`` processes sharing one subscription: readings from real gateways' ``mqtt``
uplinks reach the real FHIR server exactly once, over mutual TLS, and a bridge killed with
SIGKILL while the server refuses loses nothing once restarted with the same client id."""

from __future__ import annotations

import asyncio

from gateway.uplinks.mqtt import MqttTls
from tests.bridge.helpers import (
    SECRETS,
    BridgeProcess,
    all_once,
    envelopes,
    eventually,
    gateway,
    publish,
    write_config,
)


def assert_no_secrets(*bridges: BridgeProcess) -> None:
    for bridge in bridges:
        text = bridge.text()
        assert not any(secret in text for secret in SECRETS), bridge.log


async def test_two_bridges_share_the_work_over_mutual_tls(tmp_path, mosquitto_factory, fhir_server):
    broker = mosquitto_factory(tls=True, require_certificate=True)
    files = broker.tls_files
    tls = (files.ca_cert, files.client_cert, files.client_key)
    bridges = [
        BridgeProcess(
            write_config(tmp_path / f"b{n}.toml", broker, fhir_server, client_id=f"b{n}", tls=tls),
            tmp_path / f"b{n}.log",
        )
        for n in (1, 2)
    ]
    try:
        for bridge in bridges:
            await bridge.wait_for("subscribed to $share/edge-bridge/edge/+/readings/+")
        first, second = envelopes(20), envelopes(20, start=20)
        client_tls = MqttTls(files.ca_cert, files.client_cert, files.client_key)
        async with (
            gateway(broker, tls=client_tls, gateway_id="0000000000000001") as one,
            gateway(broker, tls=client_tls, gateway_id="0000000000000002") as two,
        ):
            await asyncio.gather(publish(one, first), publish(two, second))
        await eventually(all_once(fhir_server, first + second), timeout=30)
    finally:
        codes = [bridge.stop() for bridge in bridges]
    assert codes == [0, 0]
    delivered = [bridge.delivered() for bridge in bridges]
    assert sum(delivered) == 40 and all(delivered), delivered  # both took part
    assert_no_secrets(*bridges)


async def test_a_bridge_killed_while_the_server_refuses_loses_nothing(
    tmp_path, mosquitto, fhir_server
):
    a = BridgeProcess(
        write_config(tmp_path / "a.toml", mosquitto, fhir_server, client_id="a"), tmp_path / "a.log"
    )
    b = BridgeProcess(
        write_config(tmp_path / "b.toml", mosquitto, fhir_server, client_id="b"), tmp_path / "b.log"
    )
    early, late = envelopes(20), envelopes(10, start=20)
    try:
        for bridge in (a, b):
            await bridge.wait_for("subscribed to")
        fhir_server.inject(503, count=100_000, retry_after=1)
        async with gateway(mosquitto) as uplink:
            await publish(uplink, early)
            for bridge in (a, b):  # both hold readings they could not write
                await bridge.wait_for("FHIR server unavailable")
            a.kill()
            await publish(uplink, late)  # a's share of these waits in its session
        fhir_server.inject(503, count=0)
        await asyncio.sleep(1.5)  # b writes its share meanwhile
        a.start()
        await eventually(all_once(fhir_server, early + late), timeout=30)
    finally:
        codes = [bridge.stop() for bridge in (a, b)]
    assert codes == [0, 0]
    assert "session present: True" in a.since_start()
    # round robin over the group's sessions, the offline one included: 10 + 5 each
    assert (a.delivered(), b.delivered()) == (15, 15)
    assert_no_secrets(a, b)
