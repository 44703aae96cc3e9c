"""Smoke test of bench.drain on a few readings: both ratio lines printed, every reading where it
belongs on both sides of each comparison (no timing asserted)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench import drain
from gateway.outbox import Outbox
from tests.support.fhir_server import FhirServer
from tests.support.mosquitto import MosquittoBroker, Subscriber


async def _envelopes(data_dir: Path) -> dict[str, dict[str, int]]:
    async with Outbox(data_dir / "outbox.sqlite") as outbox:
        return (await outbox.status()).by_destination


async def test_a_tiny_run_prints_both_ratios_and_verdicts(tmp_path, capsys):
    ratios = await drain.main(6, 1, workdir=tmp_path)

    out = capsys.readouterr().out
    assert ratios.keys() == {"mqtt", "fhir"} and all(r > 0 for r in ratios.values())
    assert "(a) drain/raw = " in out and "(target >= 0.7: " in out
    assert "(b) bundled/single = " in out and "(target >= 5: " in out
    assert out.count("readings/s") == 4


async def test_both_mqtt_sides_publish_every_reading_with_the_same_bytes(tmp_path):
    readings = drain.make_readings(7)
    with (
        MosquittoBroker(tmp_path / "mosquitto") as broker,
        Subscriber(broker.host, broker.port, topic="edge/#") as subscriber,
    ):
        pipeline, raw = await drain.mqtt_round(
            broker, readings, raw_first=True, data_dir=tmp_path / "gw"
        )
        received = subscriber.wait_for(14, timeout=10.0)

    assert pipeline.seconds > 0 and raw.seconds > 0
    assert await _envelopes(tmp_path / "gw") == {"broker": {"done": 7}}  # none left pending
    assert len(received) == 14
    identifiers = Counter(m.identifier for m in received)
    assert len(identifiers) == 7 and set(identifiers.values()) == {2}  # once from each side
    by_side = {}
    for message in received:  # the raw side published first: the same bytes, to the same topic
        by_side.setdefault(message.identifier, []).append((message.topic, message.payload))
    assert all(first == second for first, second in by_side.values())
    assert {m.topic for m in received} == {f"edge/{drain.GATEWAY_ID}/readings/weight"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with FhirServer(tmp_path_factory.mktemp("fhir-server")) as server:
        yield server


@pytest.mark.parametrize("bundle_size", [20, 1])
async def test_every_reading_reaches_the_fhir_server(tmp_path, server, bundle_size):
    readings = drain.make_readings(5)
    run = await drain.fhir_run(server, readings, bundle_size, data_dir=tmp_path / "gw")
    observations = server.search("Observation")

    assert run.seconds > 0 and run.peer_cpu is not None
    assert await _envelopes(tmp_path / "gw") == {"fhir": {"done": 5}}
    assert len(observations) == 15  # weight, height and BMI of each reading, each once
    assert len({o["identifier"][0]["value"] for o in observations}) == 15
    assert len(server.search("Device")) == 2  # the scale and the gateway, created once


async def test_a_run_with_a_retried_reading_is_refused(tmp_path, server):
    server.reset()
    destination = drain.fhir_destination(server, 20)
    daemon, tally = await drain.loaded_daemon(tmp_path / "gw", destination, drain.make_readings(3))
    try:
        await daemon.uplinks["fhir"].start()
        server.inject(503, retry_after=30)
        with pytest.raises(drain.BenchError, match="0 delivered, 3 retried"):
            await drain.drain(daemon, tally, "fhir")
    finally:
        await drain.close_daemon(daemon)
