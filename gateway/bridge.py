"""``edge bridge``: readings from MQTT into a FHIR server, acknowledged only once they are safe.

Gateways publish each reading with the ``mqtt`` uplink (``gateway/uplinks/mqtt.py``) to
``<topic_prefix>/<gateway_id>/readings/<kind>``: the payload is the reading's FHIR transaction
Bundle, the MQTT 5 user property ``identifier`` its idempotency key. A bridge subscribes to
``$share/<group>/<topic_prefix>/+/readings/+`` at QoS 1 (several bridges share the work) and
writes the readings with the daemon's own ``FhirUplink`` (a ``[[destinations]]`` entry of type
``fhir``), several per transaction Bundle.

Acknowledgement is manual (paho ``manual_ack``): a message gets its PUBACK only after

* the FHIR server confirmed the reading (outcome ``delivered``), or
* it was published to ``<dead_letter_prefix>/<gateway_id>/dead-letter/<kind>`` (same payload,
  user properties ``identifier`` and ``reason``) and the broker answered that PUBLISH with a
  success reason code other than 0x10 "no matching subscribers" (mosquitto drops such a
  message: a durable consumer of the dead-letter topics must exist). Dead letters are readings
  the server rejected (4xx for that reading), payloads that are not a JSON transaction Bundle
  and messages without an ``identifier``.

A transient failure (network, 408/429/5xx, and 401/403: the bridge's own credentials, never the
reading's fault) keeps the message unacknowledged: it is tried again inside the bridge with an
exponential backoff and jitter (the server's ``Retry-After`` honoured, capped by ``retry_max``);
the other messages keep flowing meanwhile, up to ``receive_maximum`` unacknowledged at once.
If the bridge dies, the broker keeps the unacknowledged messages in this client's session and
gives them again when the same ``client_id`` reconnects; FHIR conditional creates make the
second write harmless.

PUBACK bookkeeping: each arrival of a message is acknowledged at most once and only on the
connection it arrived on (a packet identifier is only meaningful there). When the connection
drops, the broker sends the unacknowledged messages again (DUP) on the next one; they are matched
to work in progress (or recently finished) by ``(identifier, hash of the payload)``, so one
reading is written once and every arrival still gets its PUBACK.

paho runs its network loop in its own thread; its callbacks only hand values to the event loop
(``call_soon_threadsafe``). Logs carry connection state and counts only: identifiers appear at
DEBUG at most, payloads never.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import random
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.bridge_consent import ConsentGate, bundle_patient
from gateway.config import (
    BridgeSection,
    Config,
    FhirDestination,
    check_permissions,
    parse_config,
    read_toml,
)
from gateway.errors import ConfigError, GatewayError
from gateway.uplinks.base import Envelope, Outcome, OutcomeStatus, Uplink, UplinkError

__all__ = [
    "Bridge",
    "BridgeCounts",
    "BridgeError",
    "build_bridge",
    "dead_letter_topic",
    "load_bridge_config",
    "subscription_filter",
]

log = logging.getLogger(__name__)

IDENTIFIER_PROPERTY = "identifier"
REASON_PROPERTY = "reason"
_DONE_MEMORY = 10_000  # finished readings remembered, to acknowledge redeliveries at once
_PUBLISH_TIMEOUT = 10.0  # seconds for the PUBACK of a dead letter
_STATS_EVERY = 60.0  # seconds between two count lines in the log
_LEAVE_QUIET = 1.0  # --leave: no new message for this long means the session is empty
_NO_SUBSCRIBERS = 0x10
# REJECTED outcomes that are about the bridge's own credentials, not about the reading
# Refusals about the bridge or its configuration, not about the reading: credentials, or a
# request the server does not take at all (a wrong base_url, a proxy in the way). Retried, never
# dead-lettered: a dead letter is acknowledged and leaves the broker.
_NOT_THE_READING = (
    "authorisation refused",
    "HTTP 401",
    "HTTP 403",
    "HTTP 404",
    "HTTP 405",
    "HTTP 406",
    "HTTP 415",
)


class BridgeError(GatewayError):
    """The bridge cannot start (TLS files, password file...)."""


def subscription_filter(section: BridgeSection) -> str:
    return f"$share/{section.group}/{section.topic_prefix}/+/readings/+"


def dead_letter_topic(section: BridgeSection, gateway_id: str, kind: str) -> str:
    prefix = section.dead_letter_prefix or section.topic_prefix
    return f"{prefix}/{gateway_id}/dead-letter/{kind}"


def load_bridge_config(path: Path, *, client_id: str | None = None) -> Config:
    """The configuration of ``edge bridge``: a ``[bridge]`` section and the fhir destination it
    names. A bridge has no radio: ``[link]`` may be left out."""
    data = read_toml(path)
    data.setdefault("link", {"backend": "bleak"})  # unused by the bridge
    if client_id is not None and isinstance(data.get("bridge"), dict):
        data["bridge"]["client_id"] = client_id
    config = parse_config(data, base=path.parent)
    if config.bridge is None:
        raise ConfigError("bridge: the [bridge] section is missing")
    check_permissions(path, config)  # a world-readable client key or password is refused
    return config


def build_bridge(config: Config) -> Bridge:
    """The bridge of a configuration, writing through the daemon's own uplink code."""
    from gateway.daemon import build_uplink  # the daemon pulls in the radio stack: import late

    section = config.bridge
    if section is None:
        raise ConfigError("bridge: the [bridge] section is missing")
    destination = next(d for d in config.destinations if d.name == section.destination)
    assert isinstance(destination, FhirDestination)  # Config checks it
    password = None
    if section.password_file is not None:
        try:
            password = section.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"bridge.password_file: cannot read: {exc.strerror}") from exc
    uplink = build_uplink(destination, config, "bridge")
    gate = None
    if section.check_consent:
        gate = _consent_gate(config, section, uplink)
    return Bridge(
        section, uplink, bundle_size=destination.bundle_size, password=password, gate=gate
    )


def _consent_gate(config: Config, section: BridgeSection, uplink: Uplink) -> ConsentGate:
    from datetime import timedelta

    from gateway.consent import ConsentStore
    from gateway.consent.sync import sync_patient
    from gateway.uplinks.fhir import FhirUplink

    assert isinstance(uplink, FhirUplink)  # a fhir destination (Config checks it)
    store = ConsentStore(config.gateway.data_dir / "consent.sqlite")
    ttl = timedelta(hours=section.consent_cache_hours)

    async def fetch(patient: str) -> int:
        return await sync_patient(store, uplink, section.destination, patient, ttl=ttl)

    return ConsentGate(store, section.destination, fetch, refresh=section.consent_refresh)


@dataclass
class BridgeCounts:
    """What one bridge process did since it started."""

    received: int = 0  # PUBLISH packets, redeliveries included
    duplicates: int = 0  # arrivals of a reading already in hand or just finished
    delivered: int = 0  # readings the FHIR server confirmed
    dead_lettered: int = 0  # readings published to a dead-letter topic
    consent_denied: int = 0  # readings the consent gate refused (dead-lettered)
    retries: int = 0  # FHIR attempts that must be tried again
    acked: int = 0  # PUBACKs sent

    def line(self) -> str:
        return (
            f"{self.received} received ({self.duplicates} duplicates), {self.delivered} delivered,"
            f" {self.dead_lettered} dead-lettered ({self.consent_denied} for consent),"
            f" {self.retries} retries, {self.acked} acked"
        )


Arrival = tuple[int, int]  # (connection number, packet identifier) of one received PUBLISH


@dataclass(eq=False)
class _Item:
    """One reading in hand, with every arrival of it still waiting for its PUBACK."""

    seq: int
    key: tuple[str, bytes]
    identifier: str | None
    gateway_id: str
    kind: str
    payload: bytes
    content_type: str | None
    arrivals: list[Arrival] = field(default_factory=list)
    patient: str | None = None  # SYSTEM|VALUE of the bundle's Observations (the consent gate)
    reason: str | None = None  # set: goes to the dead-letter topic
    attempts: int = 0
    due: float = 0.0  # loop time before which it is not tried (again)
    busy: bool = False


class _Tagged(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Every line says which bridge process it comes from."""

    def __init__(self, logger: logging.Logger, tag: str) -> None:
        super().__init__(logger, {})
        self.tag = tag

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.tag}: {msg}", kwargs


def _properties(packet_type: int) -> Any:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _bundle_problem(payload: bytes) -> str | None:
    """Why the payload cannot be one reading's transaction Bundle (a text without values)."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "payload is not JSON"
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        return "payload is not a FHIR Bundle"
    if document.get("type") != "transaction":
        return "payload is not a transaction Bundle"
    entries = document.get("entry")
    if not isinstance(entries, list) or not entries:
        return "the Bundle has no entries"
    if not all(isinstance(e, dict) and isinstance(e.get("resource"), dict) for e in entries):
        return "a Bundle entry has no resource"
    return None


class Bridge:
    """MQTT shared subscription -> ``Uplink`` (a ``FhirUplink``); see the module docstring."""

    def __init__(
        self,
        section: BridgeSection,
        uplink: Uplink,
        *,
        bundle_size: int = 20,
        password: str | None = None,
        publish_timeout: float = _PUBLISH_TIMEOUT,
        gate: ConsentGate | None = None,
    ) -> None:
        self.section = section
        self.gate = gate
        """The consent gate, asked right before each write (None: ``check_consent = false``)."""
        self.uplink = uplink
        self.bundle_size = bundle_size
        self.password = password
        self.publish_timeout = publish_timeout
        self.topic_filter = subscription_filter(section)
        self.counts = BridgeCounts()
        self._log = _Tagged(log, f"bridge {section.client_id}")
        self.subscribed = asyncio.Event()  # the broker granted the shared subscription
        self.connected = asyncio.Event()

        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # shared with paho's thread, under _lock: which connection is up
        self._lock = threading.Lock()
        self._connection = 0
        self._live = False
        self._subscribe_wanted = True
        # event loop only
        self._items: dict[tuple[str, bytes], _Item] = {}
        self._done: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._seq = itertools.count(1)
        self._wake_fhir = asyncio.Event()
        self._wake_dead = asyncio.Event()
        self._accepting = True
        self._gate = 0.0  # no FHIR request before this loop time (the server asked to wait)
        self._pending: dict[int, asyncio.Future[int]] = {}  # dead-letter PUBLISH -> PUBACK code
        self._unsubscribed = asyncio.Event()
        self._left = False  # the broker confirmed the unsubscription (--leave)
        self._disconnected = asyncio.Event()
        self._last_arrival = 0.0
        self._refused_logged = False
        self._no_subscriber_logged = False

    # ---- observing (tests, logs)

    @property
    def in_hand(self) -> int:
        """Readings received and not yet delivered or dead-lettered."""
        return len(self._items)

    @property
    def unacknowledged(self) -> int:
        """Arrivals on the current connection still waiting for their PUBACK."""
        with self._lock:
            current = self._connection
        return sum(1 for i in self._items.values() for a in i.arrivals if a[0] == current)

    # ---- life cycle

    async def run(self, stop: asyncio.Event, *, leave: bool = False) -> None:
        """Bridge until ``stop`` is set, then finish what was begun (``drain_timeout``) and
        disconnect, keeping the session. ``leave``: first unsubscribe and take in what the broker
        still queued for this client, then end the session (removing this bridge for good)."""
        self._loop = asyncio.get_running_loop()
        try:
            await self.uplink.start()
        except UplinkError as exc:
            raise BridgeError(str(exc)) from exc
        workers: list[asyncio.Task[None]] = []
        try:
            self._start_client()
            workers = [
                asyncio.create_task(self._fhir_worker(), name="bridge-fhir"),
                asyncio.create_task(self._dead_letter_worker(), name="bridge-dead-letter"),
                asyncio.create_task(self._stats_worker(), name="bridge-stats"),
            ]
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([stopping, *workers], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            for worker in workers:
                if worker.done():
                    worker.result()  # a bug in a worker: raise it
            await self._drain(leave)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self._close_client(end_session=leave and self._left and not self._items)
            with contextlib.suppress(Exception):
                await self.uplink.close()
            if self.gate is not None:
                self.gate.store.close()
            self._log.info("stopped: %s", self.counts.line())

    def _start_client(self) -> None:
        s = self.section
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if s.ca_file is not None:
            try:
                client.tls_set(
                    ca_certs=str(s.ca_file),
                    certfile=None if s.cert_file is None else str(s.cert_file),
                    keyfile=None if s.key_file is None else str(s.key_file),
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise BridgeError(f"bridge: bad TLS files: {exc}") from exc
        if s.username is not None:
            client.username_pw_set(s.username, self.password)
        client.max_inflight_messages_set(20)  # dead letters awaiting their PUBACK
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = s.session_expiry
        props.ReceiveMaximum = s.receive_maximum
        client.connect_async(
            s.host, s.port, keepalive=s.keepalive, clean_start=False, properties=props
        )
        client.loop_start()
        self._client = client
        self._log.info(
            "connecting to %s:%d, subscribing to %s",
            s.host,
            s.port,
            self.topic_filter,
        )

    async def _drain(self, leave: bool) -> None:
        loop = asyncio.get_running_loop()
        client = self._client
        if leave:
            self._subscribe_wanted = False
            if client is not None and self.connected.is_set():
                self._unsubscribed.clear()
                client.unsubscribe(self.topic_filter)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):
                        await self._unsubscribed.wait()
            self._last_arrival = loop.time()
        else:
            self._accepting = False  # new messages stay with the broker, for the next start
        deadline = loop.time() + self.section.drain_timeout
        while loop.time() < deadline:
            quiet = not leave or loop.time() - self._last_arrival >= _LEAVE_QUIET
            if not self._items and quiet:
                break
            await asyncio.sleep(0.05)
        if self._items:
            self._log.warning(
                "stopping with %d readings not yet written: the broker keeps them"
                " for client id %s (session expiry %d s)",
                len(self._items),
                self.section.client_id,
                self.section.session_expiry,
            )

    async def _close_client(self, *, end_session: bool) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self._disconnected.clear()
        if end_session and self.connected.is_set():
            props = _properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
            client.disconnect(properties=props)
            self._log.info("left the group, session ended")
        else:
            client.disconnect()
        if self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._disconnected.wait()
        await asyncio.to_thread(client.loop_stop)
        self.connected.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("bridge stopped"))
        self._pending.clear()

    # ---- receiving

    def _arrived(
        self,
        arrival: Arrival | None,
        topic: str,
        payload: bytes,
        identifier: str | None,
        content_type: str | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.counts.received += 1
        self._last_arrival = loop.time()
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        key = (identifier or "", digest)
        if key in self._done:
            self.counts.duplicates += 1
            self._ack(arrival)
            return
        item = self._items.get(key)
        if item is not None:
            self.counts.duplicates += 1
            if arrival is not None:
                item.arrivals.append(arrival)
            return
        if not self._accepting:
            return  # stopping: left with the broker, unacknowledged
        gateway_id, kind, reason = self._parse_topic(topic)
        if reason is None and not identifier:
            reason = f"no {IDENTIFIER_PROPERTY} user property"
        if reason is None:
            reason = _bundle_problem(payload)
        item = _Item(
            seq=next(self._seq),
            key=key,
            identifier=identifier,
            gateway_id=gateway_id,
            kind=kind,
            payload=payload,
            content_type=content_type,
            arrivals=[arrival] if arrival is not None else [],
            patient=bundle_patient(payload) if reason is None and self.gate else None,
            reason=reason,
            due=loop.time(),
        )
        self._items[key] = item
        self._log.debug("reading %s received (%s)", identifier, "dead letter" if reason else "ok")
        self._kick()

    def _parse_topic(self, topic: str) -> tuple[str, str, str | None]:
        prefix = self.section.topic_prefix + "/"
        levels = topic.removeprefix(prefix).split("/") if topic.startswith(prefix) else []
        if len(levels) != 3 or levels[1] != "readings":
            return "unknown", "unknown", "unexpected topic"
        gateway_id, _, kind = levels
        if not gateway_id or not kind:
            return gateway_id or "unknown", kind or "unknown", "empty gateway id or kind in topic"
        return gateway_id, kind, None

    def _ack(self, arrival: Arrival | None) -> bool:
        """PUBACK one arrival, only on the connection it came on (else the broker sends it
        again on the next one, and it is acknowledged then)."""
        client = self._client
        if arrival is None or client is None:
            return False
        connection, mid = arrival
        with self._lock:
            if not self._live or connection != self._connection:
                return False
            rc = client.ack(mid, 1)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self.counts.acked += 1
        return True

    def _finish(self, item: _Item) -> None:
        """The reading is safe (written, or dead-lettered): acknowledge every arrival of it."""
        self._items.pop(item.key, None)
        self._done[item.key] = None
        while len(self._done) > _DONE_MEMORY:
            self._done.popitem(last=False)
        for arrival in item.arrivals:
            self._ack(arrival)
        item.arrivals.clear()

    def _retry_delay(self, attempts: int, retry_after: float | None) -> float:
        s = self.section
        if retry_after is not None:
            wait = min(retry_after, s.retry_max)
            return wait + random.uniform(0, 0.1 * wait + 0.05)
        ceiling = min(s.retry_max, s.retry_base * 2 ** max(0, attempts - 1))
        return random.uniform(ceiling / 2, ceiling)

    # ---- writing to the FHIR server

    def _ready(self, now: float) -> list[_Item]:
        return sorted(
            (i for i in self._items.values() if i.reason is None and not i.busy and i.due <= now),
            key=lambda i: i.seq,
        )

    def _next_due(self, dead_letters: bool) -> float | None:
        dues = [
            i.due
            for i in self._items.values()
            if (i.reason is not None) == dead_letters and not i.busy
        ]
        return min(dues) if dues else None

    def _kick(self) -> None:
        self._wake_fhir.set()
        self._wake_dead.set()

    @staticmethod
    async def _wait(wake: asyncio.Event, until: float | None) -> None:
        """Until ``wake`` is set (something changed), or ``until`` (loop time)."""
        wake.clear()
        timeout = None if until is None else max(0.0, until - asyncio.get_running_loop().time())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await wake.wait()

    async def _fhir_worker(self) -> None:
        loop = asyncio.get_running_loop()
        linger = self.section.linger
        while True:
            now = loop.time()
            if now < self._gate:
                await asyncio.sleep(self._gate - now)
                continue
            ready = self._ready(now)
            if not ready:
                await self._wait(self._wake_fhir, self._next_due(False))
                continue
            oldest = min(i.due for i in ready)
            if len(ready) < self.bundle_size and now < oldest + linger:
                await self._wait(self._wake_fhir, oldest + linger)  # fuller bundles
                continue
            batch: list[_Item] = []
            identifiers: set[str | None] = set()
            for item in ready:
                if item.identifier in identifiers:
                    continue  # two versions of one reading never share a transaction
                identifiers.add(item.identifier)
                batch.append(item)
                if len(batch) == self.bundle_size:
                    break
            batch = await self._consented(batch)
            if batch:
                await self._send(batch)

    async def _consented(self, batch: list[_Item]) -> list[_Item]:
        """The readings the consent gate permits, asked right before the write. A permanent
        refusal goes to the dead-letter topic; one for want of a fresh answer waits."""
        if self.gate is None:
            return batch
        allowed = []
        for item in batch:
            item.busy = True  # not taken by another worker while the gate fetches
            try:
                verdict = await self.gate.check(item.patient, item.kind)
            finally:
                item.busy = False
            if verdict.decision.permit:
                allowed.append(item)
                continue
            now = asyncio.get_running_loop().time()
            if verdict.transient:
                item.attempts += 1
                item.due = now + self._retry_delay(item.attempts, None)
                self._log.info(
                    "consent unknown for now (%s): retried later", verdict.decision.reason
                )
            else:
                self.counts.consent_denied += 1
                item.reason = f"consent denied at the record: {verdict.decision.reason}"
                item.attempts = 0
                item.due = now
                self._log.info(
                    "a reading was refused by the consent gate: %s", verdict.decision.reason
                )
        if len(allowed) < len(batch):
            self._kick()
        return allowed

    async def _send(self, batch: list[_Item]) -> None:
        for item in batch:
            item.busy = True
            item.attempts += 1
        envelopes = [
            Envelope(
                id=item.seq,
                destination=self.uplink.name,
                idem_key=item.identifier or "",
                body=item.payload,
                attempts=item.attempts - 1,
                kind=item.kind,
                # a gateway may have published this reading before, and this or another bridge
                # may have written it: where the server cannot deduplicate, look first
                maybe_sent=True,
            )
            for item in batch
        ]
        try:
            outcomes = await self.uplink.send(envelopes)
        except Exception as exc:  # an uplink bug must neither lose nor block readings
            self._log.error("FHIR uplink failed: %s", type(exc).__name__)
            self._log.debug("uplink failure", exc_info=True)
            outcomes = [
                Outcome(envelope_id=e.id, status=OutcomeStatus.RETRY, reason="uplink error")
                for e in envelopes
            ]
        by_id = {o.envelope_id: o for o in outcomes}
        now = asyncio.get_running_loop().time()
        delivered = retried = 0
        shortest: float | None = None
        why = ""
        for item in batch:
            item.busy = False
            outcome = by_id.get(item.seq) or Outcome(
                envelope_id=item.seq, status=OutcomeStatus.RETRY, reason="no outcome"
            )
            status = outcome.status
            if status is OutcomeStatus.REJECTED and outcome.reason.startswith(_NOT_THE_READING):
                self._log.error("the FHIR server refused the bridge: %s", outcome.reason)
                status = OutcomeStatus.RETRY
            if status is OutcomeStatus.DELIVERED:
                delivered += 1
                self.counts.delivered += 1
                self._finish(item)
            elif status is OutcomeStatus.REJECTED:
                item.reason = f"rejected by the FHIR server: {outcome.reason}"
                item.attempts = 0
                item.due = now
                self._log.warning("a reading was rejected: %s", outcome.reason)
            else:
                retried += 1
                self.counts.retries += 1
                why = why or outcome.reason
                delay = self._retry_delay(item.attempts, outcome.retry_after)
                item.due = now + delay
                shortest = delay if shortest is None else min(shortest, delay)
                self._log.debug("reading %s retried in %.1f s", item.identifier, delay)
        if retried and not delivered and shortest is not None:
            self._gate = now + shortest  # the server is not taking anything: do not hammer it
            self._log.info("FHIR server unavailable (%s), next try in %.1f s", why, shortest)
        self._kick()

    # ---- dead letters

    async def _dead_letter_worker(self) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                now = loop.time()
                for item in list(self._items.values()):
                    if item.reason is not None and not item.busy and item.due <= now:
                        item.busy = True
                        task = asyncio.create_task(self._dead_letter(item))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                await self._wait(self._wake_dead, self._next_due(True))
        finally:
            for task in tasks:
                task.cancel()

    async def _dead_letter(self, item: _Item) -> None:
        try:
            ok, why = await self._publish_dead_letter(item)
        finally:
            item.busy = False
        if ok:
            self.counts.dead_lettered += 1
            self._log.info("a reading went to the dead-letter topic: %s", item.reason)
            self._finish(item)
        else:
            item.attempts += 1
            item.due = asyncio.get_running_loop().time() + self._retry_delay(item.attempts, None)
            self._log.debug("dead letter not published (%s), retried later", why)
        self._kick()

    async def _publish_dead_letter(self, item: _Item) -> tuple[bool, str]:
        client = self._client
        if client is None or not self.connected.is_set():
            return False, "not connected"
        assert item.reason is not None
        props = _properties(PacketTypes.PUBLISH)
        user = [(REASON_PROPERTY, item.reason)]
        if item.identifier:
            user.insert(0, (IDENTIFIER_PROPERTY, item.identifier))
        props.UserProperty = user
        if item.content_type:
            props.ContentType = item.content_type
        topic = dead_letter_topic(self.section, item.gateway_id, item.kind)
        try:
            info = client.publish(topic, item.payload, qos=1, properties=props)
        except ValueError as exc:
            return False, f"refused by the MQTT client: {exc}"
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False, mqtt.error_string(info.rc)
        # registered before the first await: the PUBACK callback runs on this loop, after us
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[info.mid] = future
        try:
            async with asyncio.timeout(self.publish_timeout):
                code = await future
        except TimeoutError:
            return False, "no PUBACK"
        except ConnectionError as exc:
            return False, str(exc)
        finally:
            if self._pending.get(info.mid) is future:
                del self._pending[info.mid]
        if code == _NO_SUBSCRIBERS:
            if not self._no_subscriber_logged:
                self._no_subscriber_logged = True
                self._log.error(
                    "nobody subscribes to the dead-letter topics (%s/+/dead-letter/#):"
                    " the broker would drop dead letters; they stay unacknowledged until a"
                    " durable consumer subscribes",
                    self.section.dead_letter_prefix or self.section.topic_prefix,
                )
            return False, "no subscriber on the dead-letter topic"
        if code >= 0x80:
            self._log.error("the broker refused a dead letter: reason code 0x%02X", code)
            return False, f"PUBACK 0x{code:02X}"
        self._no_subscriber_logged = False
        return True, ""

    async def _stats_worker(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(_STATS_EVERY)
            line = self.counts.line()
            if line != last:
                self._log.info("%s, %d in hand", line, self.in_hand)
                last = line

    # ---- paho callbacks (network thread): record the connection, hand over, nothing else

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(callback, *args)

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self._post(self._refused, str(reason))
            return
        with self._lock:
            self._connection += 1
            self._live = True
            connection = self._connection
        if self._subscribe_wanted:
            client.subscribe(self.topic_filter, options=SubscribeOptions(qos=1))
        session = bool(getattr(flags, "session_present", False))
        self._post(self._connected_now, connection, session)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._post(self._refused, "connection failed")

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        with self._lock:
            was_live, self._live = self._live, False
        self._post(self._disconnected_now, was_live, str(reason))

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            connection = self._connection
        props = getattr(message, "properties", None)
        user = getattr(props, "UserProperty", None) or []
        identifier = next((v for k, v in user if k == IDENTIFIER_PROPERTY), None)
        content_type = getattr(props, "ContentType", None)
        arrival = (connection, message.mid) if message.qos > 0 else None
        self._post(
            self._arrived, arrival, message.topic, bytes(message.payload), identifier, content_type
        )

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reason: Any, _props: Any
    ) -> None:
        self._post(self._puback, mid, int(reason.value))

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, codes: Any, _props: Any
    ) -> None:
        self._post(self._suback, [(int(c.value), str(c)) for c in codes])

    def _on_unsubscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, codes: Any, _props: Any
    ) -> None:
        self._post(self._unsuback, [int(c.value) for c in codes or []])

    # ---- the same events, on the event loop

    def _connected_now(self, connection: int, session_present: bool) -> None:
        for item in self._items.values():  # older arrivals come again on this connection
            item.arrivals = [a for a in item.arrivals if a[0] == connection]
        self._refused_logged = False
        self.connected.set()
        self._disconnected.clear()
        self._log.info(
            "connected to %s:%d (session present: %s)",
            self.section.host,
            self.section.port,
            session_present,
        )
        self._kick()

    def _refused(self, text: str) -> None:
        level = logging.DEBUG if self._refused_logged else logging.WARNING
        self._refused_logged = True
        self._log.log(level, "cannot connect: %s", text)

    def _disconnected_now(self, was_live: bool, text: str) -> None:
        self.connected.clear()
        self.subscribed.clear()
        self._disconnected.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("connection lost before the PUBACK"))
        self._pending.clear()
        if was_live and self._client is not None:
            self._log.warning("disconnected (%s), reconnecting", text)

    def _suback(self, codes: list[tuple[int, str]]) -> None:
        refused = [text for code, text in codes if code >= 0x80]
        if refused:
            self._log.error(
                "the broker refused the subscription %s: %s",
                self.topic_filter,
                ", ".join(refused),
            )
            return
        self.subscribed.set()
        self._log.info("subscribed to %s", self.topic_filter)

    def _unsuback(self, codes: list[int]) -> None:
        self._left = all(code < 0x80 for code in codes)
        self._unsubscribed.set()
        if self._left:
            self._log.info("unsubscribed from %s", self.topic_filter)
        else:
            self._log.warning("the broker refused to unsubscribe: %s", codes)

    def _puback(self, mid: int, code: int) -> None:
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(code)
