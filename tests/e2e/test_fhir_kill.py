"""kill -9 of the daemon while it drains a scale's memory to a real FHIR server over HTTPS: every
reading the scale saw confirmed ends up in the server exactly once, and so does every Device.

The daemon (``edge run``) and the emulated scale (``edge emulate --generate N``) are separate
processes, so the scale survives the kills and hands the rest of its memory to the next run.
The second test puts a TCP relay between the gateway and the server that swallows the server's
answers: the server commits a bundle, the gateway never learns it, and is killed waiting.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing, suppress
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from drivers.codecs.weight_scale import WeightMeasurement
from gateway.config import load_config
from tests.e2e.helpers import GENERIC_SYSID, PATIENT, grant
from tests.e2e.processes import Emulator, count_lines, start_daemon
from tests.support.fhir_server import FhirServer

WEIGHT = "29463-7"  # LOINC body weight: the generated readings' Observations
GENERATED_FROM = datetime(
    2026, 1, 1, 8, 0, 0
)  # `edge emulate --generate`: reading i is i min later


# ------------------------------------------------------------------------------ set-up


def _write_config(
    tmp: Path, emulator_port: int, base_url: str, ca_file: str | None, **fhir: Any
) -> Path:
    options = "\n".join(f"{key} = {value}" for key, value in fhir.items())
    config = tmp / "edge.toml"
    config.write_text(
        f"""
[gateway]
data_dir = "data"
timezone = "Europe/Paris"

[link]
backend = "bumble"
transport = "tcp-client:127.0.0.1:{emulator_port}"
scan_seconds = 0.3
idle_timeout = 2.0

[[bindings]]
device = "{GENERIC_SYSID}"
user_index = 1
patient = "{PATIENT}"

[[destinations]]
type = "fhir"
name = "server"
base_url = "{base_url}"
ca_file = "{ca_file}"
{options}

[outbox]
retry_base = 0.05
retry_max = 0.5
consent_poll = 0.1
""",
        encoding="utf-8",
    )
    grant(load_config(config), destination="server")
    return config


class Run:
    """One test's scale, config and daemon processes (started and killed by the test)."""

    def __init__(self, tmp: Path, server: FhirServer, readings: int) -> None:
        self.tmp = tmp
        self.server = server
        self.readings = readings
        self.acks = tmp / "acked.jsonl"
        self.log = tmp / "daemon.log"
        self.emulator = Emulator(
            "generic-wss", "--generate", str(readings), "--ack-log", str(self.acks), cwd=tmp
        )
        self.daemon: subprocess.Popen[bytes] | None = None

    def start(self, config: Path) -> None:
        self.daemon = start_daemon(config, self.log)

    def kill(self) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait(10)

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(10)
        self.emulator.stop()

    def until(self, condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Poll ``condition``; fail early with the daemon's log if it died meanwhile."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.daemon is not None and self.daemon.poll() is not None:
                pytest.fail(f"daemon exited while waiting for {what}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-2000:]

    # -- what each side holds

    def acked(self) -> int:
        return count_lines(self.acks)

    def in_server(self) -> int:
        """Weight Observations in the server (a count, cheap enough to poll)."""
        response = self.server.http.get(
            "/Observation", params={"code": WEIGHT, "_summary": "count"}
        )
        response.raise_for_status()
        total: int = response.json()["total"]
        return total

    def settled_in_server(self) -> int:
        """The count once requests already on their way at a kill have been answered (the
        daemon keeps two batches in flight; the server finishes what it received)."""
        count, steady = self.in_server(), 0
        while steady < 3:  # unchanged for ~1.5 s: a loaded server may still be finishing one
            time.sleep(0.5)
            again = self.in_server()
            steady = steady + 1 if again == count else 0
            count = again
        return count

    def outbox(self) -> dict[str, int]:
        """Envelope states for the server (weights only); readable while the daemon writes."""
        path = self.tmp / "data" / "outbox.sqlite"
        if not path.exists():
            return {}
        with closing(sqlite3.connect(path, timeout=10)) as db:
            rows = db.execute(
                "SELECT e.state, COUNT(*) FROM envelopes e JOIN readings r ON r.id = e.reading_id"
                " WHERE e.destination = 'server' AND r.kind = 'weight' GROUP BY e.state"
            ).fetchall()
        return {state: count for state, count in rows}

    def resent(self) -> int:
        """Delivered envelopes that were handed to the uplink more than once."""
        with closing(sqlite3.connect(self.tmp / "data" / "outbox.sqlite", timeout=10)) as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM envelopes WHERE destination = 'server' AND state = 'done'"
                " AND leases > 1"
            ).fetchone()
        return int(count)

    def all_delivered(self) -> bool:
        n = self.readings
        return self.acked() >= n and self.outbox() == {"done": n} and self.in_server() >= n

    def finish(self) -> None:
        """Wait for the last run to deliver everything, then stop it cleanly (SIGTERM)."""
        self.until(self.all_delivered, "every reading acknowledged and delivered", timeout=60)
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        assert self.daemon.wait(20) == 0, self._log_tail()
        assert PATIENT.split("|")[1] not in self.log.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------ the verdict


def _identifiers(resource: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i["system"], i["value"]) for i in resource.get("identifier", [])]


def assert_exactly_once(run: Run) -> None:
    """Every reading the scale saw confirmed is in the server once, with its value; no
    Observation or Device is there twice; every Observation points at a stored Device."""
    acked = [line for line in run.acks.read_text(encoding="utf-8").splitlines() if line]
    entries = [json.loads(line) for line in acked]
    assert len(entries) == len({e["index"] for e in entries}) == run.readings
    expected: dict[str, Decimal] = {}
    for entry in entries:
        measurement = WeightMeasurement.decode(bytes.fromhex(entry["hex"]))
        assert measurement.timestamp is not None
        when = measurement.timestamp.to_datetime()
        assert when is not None
        i = (when - GENERATED_FROM) // timedelta(minutes=1)  # the generator's own numbering
        expected[when.isoformat()] = Decimal(60000 + 5 * (i % 4000)) / 1000

    observations = run.server.search("Observation", {"subject:identifier": PATIENT}, code=WEIGHT)
    found = Counter(o["effectiveDateTime"][:19] for o in observations)
    twice = {when: n for when, n in found.items() if n > 1}
    assert not twice, f"readings stored more than once: {sorted(twice)[:5]}"
    assert set(found) == set(expected), (
        f"missing {sorted(set(expected) - set(found))[:5]}, "
        f"unexpected {sorted(set(found) - set(expected))[:5]}"
    )
    for o in observations:
        when = o["effectiveDateTime"][:19]
        assert Decimal(str(o["valueQuantity"]["value"])) == expected[when], when

    everything = run.server.search("Observation")
    ids = Counter(key for o in everything for key in _identifiers(o))
    assert all(n == 1 for n in ids.values()), [k for k, n in ids.items() if n > 1][:5]

    devices = run.server.search("Device")
    device_ids = Counter(key for d in devices for key in _identifiers(d))
    assert all(n == 1 for n in device_ids.values()), f"Device twice: {device_ids.most_common(3)}"
    assert any(value == GENERIC_SYSID for _, value in device_ids), device_ids
    stored = {f"Device/{d['id']}" for d in devices}
    assert {o["device"]["reference"] for o in everything} <= stored


# ------------------------------------------------------------------------------ the tests


def test_kill_9_while_draining_to_fhir_loses_and_duplicates_nothing(tmp_path, fhir_server):
    readings = 200
    run = Run(tmp_path, fhir_server, readings)
    config = _write_config(
        tmp_path, run.emulator.port, fhir_server.base_url, fhir_server.ca_file, bundle_size=2
    )
    try:
        # first kill: early, while the scale is still handing over its memory
        run.start(config)
        run.until(lambda: run.in_server() >= readings // 5, "a first part of the drain")
        run.kill()
        first = run.settled_in_server()
        assert 0 < first < readings, "the kill came too late to interrupt the drain"

        # second kill: the whole memory is in the outbox, the drain is half-way through. The
        # server refuses (503) until the scale is read, so the drain starts from a full backlog.
        done = run.outbox().get("done", 0)
        fhir_server.inject(503, count=100_000)
        run.start(config)
        run.until(lambda: run.acked() >= readings, "the scale's whole memory read")
        # nothing got through meanwhile: read in the outbox while the faults hold (the server's
        # own count cannot be asked then, and once they are cleared a retry may land at once)
        assert run.outbox().get("done", 0) == done
        fhir_server.inject(503, count=0)  # the server is back (the faults hit every request)
        run.until(lambda: run.in_server() >= readings // 2, "half of the readings sent")
        run.kill()
        second = run.settled_in_server()
        assert first < second < readings, "the kill came too late to interrupt the drain"
        assert run.outbox().get("pending", 0) > 0  # the rest waits, durably

        run.start(config)  # undisturbed: finishes the job
        run.finish()
    finally:
        run.close()
    assert_exactly_once(run)


class AnswerEater:
    """A TCP relay to the FHIR server (TLS passes through it untouched). While ``eating`` is set,
    requests still reach the server, which processes and commits them, but its answers are
    discarded and the connections left open: the client waits for an answer that never comes,
    as when a link dies after the request went out."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.eating = threading.Event()
        self.eaten = 0  # bytes of answers discarded
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers and self.eating.is_set():
                    with self._lock:
                        self.eaten += len(data)
                    continue
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()


def test_kill_9_waiting_for_a_lost_answer_resends_without_duplicates(tmp_path, fhir_server):
    """The server commits a bundle and its answer is lost; the daemon, still waiting for it, is
    killed. The next run sends those readings again: the conditional creates find them there."""
    readings = 60
    relay = AnswerEater(fhir_server.port)
    run = Run(tmp_path, fhir_server, readings)
    # a long timeout: the daemon must still be waiting for the answer when it is killed
    base_url = f"https://127.0.0.1:{relay.port}"
    config = _write_config(
        tmp_path, run.emulator.port, base_url, fhir_server.ca_file, bundle_size=3, timeout=120.0
    )
    try:
        run.start(config)
        run.until(lambda: run.in_server() >= 9, "a few bundles delivered normally")
        relay.eating.set()

        def answer_lost() -> bool:
            # done first: whatever is done was committed before the count is read
            done = run.outbox().get("done", 0)
            return relay.eaten > 0 and run.in_server() > done

        run.until(answer_lost, "a bundle committed by the server, its answer lost")
        run.kill()
        in_server, done = run.in_server(), run.outbox().get("done", 0)
        # the server holds readings the gateway never learnt were delivered
        assert in_server > done, (in_server, done)
        assert in_server < readings

        relay.eating.clear()  # the link is back
        run.start(config)
        run.finish()
        # the readings whose answer was lost went out again (and were found, not created)
        assert run.resent() >= in_server - done
    finally:
        run.close()
        relay.close()
    assert_exactly_once(run)
