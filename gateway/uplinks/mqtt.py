"""The ``mqtt`` uplink: each envelope's Bundle is published at QoS 1 and judged by its PUBACK.

Topic: ``<topic_prefix>/<gateway_id>/readings/<kind>``, no patient identifier or value in it.
Payload: the envelope body, byte for byte. MQTT 5 properties: content type
``application/fhir+json``, payload format UTF-8, and the user property ``identifier`` = the
envelope's idempotency key, on which the consumer (the MQTT-to-FHIR bridge) de-duplicates.

Outcome of one publish (paho-mqtt 2.x, MQTT 5):

* PUBACK reason code below 0x80 (0x00 success) -> DELIVERED, except 0x10 "no matching
  subscribers": the broker dropped the message, nobody will ever get it. With
  ``require_subscriber`` (the default) that is a RETRY, until the consumer (the bridges' shared
  subscription) exists; without, DELIVERED (a broker whose consumers come and go by design);
* PUBACK 0x83 (implementation specific, e.g. payload too large), 0x87 (not authorised),
  0x90 (topic name invalid), 0x99 (payload format invalid) -> REJECTED: sending the same bytes to
  the same topic again would get the same answer;
* any other PUBACK >= 0x80 (0x80 unspecified, 0x91 packet id in use, 0x97 quota exceeded, and
  codes this module does not know) -> RETRY;
* not connected -> RETRY without calling ``publish`` ("broker unreachable");
* ``publish`` answering MQTT_ERR_NO_CONN, the connection dropping before the PUBACK, or no
  PUBACK within ``publish_timeout`` -> RETRY. paho may still deliver such a message later from
  its in-memory queue: the consumer de-duplicates by identifier, and nothing is counted as sent.
* a payload larger than ``max_payload`` or than the broker's advertised Maximum Packet Size ->
  REJECTED without publishing. This guard matters: mosquitto 2.0.11 answers a payload above its
  ``message_size_limit`` with PUBACK 0x95, which paho 2.2 cannot decode; paho then drops the
  connection and re-sends the same message after every reconnect, blocking everything behind it.
  Set ``max_payload`` no higher than the broker's limit.

paho's ``is_published()`` is never used (it is set by any PUBACK, failures included) and
``wait_for_publish()`` is never called: every PUBACK goes through ``on_publish`` to an asyncio
future keyed by message id, awaited with a timeout.

paho runs its network loop in its own thread (``loop_start``) and reconnects by itself
(``reconnect_delay_set(1, 30)``); its callbacks only hand values to the event loop with
``call_soon_threadsafe``, so every piece of state here is touched by the event loop alone.
The session is kept by the broker (stable client id, ``clean_start=False``, session expiry).
Logs carry connection state only, never payloads or identifiers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers, writeUTF

from gateway.uplinks.base import Envelope, Outcome, OutcomeStatus, UplinkError

__all__ = ["MqttTls", "MqttUplink", "classify_puback"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/fhir+json"
IDENTIFIER_PROPERTY = "identifier"

# PUBACK failure codes that will not change if the same message is sent again.
_PERMANENT = {
    0x83: "implementation specific error (e.g. payload too large)",
    0x87: "not authorized",
    0x90: "topic name invalid",
    0x99: "payload format invalid",
}
# Failure codes worth another try later; unknown failure codes are treated the same way.
_TRANSIENT = {
    0x80: "unspecified error",
    0x91: "packet identifier in use",
    0x97: "quota exceeded",
}
_TOPIC_FORBIDDEN = frozenset("/+#\x00")


NO_SUBSCRIBERS = 0x10


def classify_puback(code: int, *, require_subscriber: bool = True) -> tuple[OutcomeStatus, str]:
    """Map an MQTT 5 PUBACK reason code to an outcome status and a reason text."""
    if code == NO_SUBSCRIBERS and require_subscriber:
        return OutcomeStatus.RETRY, "no subscriber took it (0x10): is the bridge subscribed?"
    if code < 0x80:
        return OutcomeStatus.DELIVERED, ""
    if code in _PERMANENT:
        return (
            OutcomeStatus.REJECTED,
            f"broker refused the message: 0x{code:02X} {_PERMANENT[code]}",
        )
    name = _TRANSIENT.get(code, "unknown reason code")
    return OutcomeStatus.RETRY, f"broker could not take the message now: 0x{code:02X} {name}"


@dataclass(frozen=True, slots=True)
class MqttTls:
    """Files for TLS: the CA that signed the broker, and a client certificate for mTLS."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


def _properties(packet_type: int) -> Any:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


class _PublishProperties(Properties):
    """PUBLISH properties that pack to bytes made once per message. paho validates each
    assignment and packs by scanning its whole property-name table, about half of a publish's
    CPU; here the fixed part is packed once and the identifier appended with paho's own
    encoders (byte-identical to paho's ``pack()``: see the tests)."""

    _body: bytes  # set per message, past paho's validating __setattr__

    def pack(self) -> bytes:
        body = self._body
        return bytes(VariableByteIntegers.encode(len(body))) + body  # type: ignore[no-untyped-call]


def _publish_template() -> Any:
    props = _PublishProperties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = CONTENT_TYPE
    props.PayloadFormatIndicator = 1
    packed: bytes = Properties.pack(props)  # type: ignore[no-untyped-call]
    for prefix in range(1, 5):  # the length prefix is a variable byte integer
        size = len(packed) - prefix
        if len(VariableByteIntegers.encode(size)) == prefix:  # type: ignore[no-untyped-call]
            object.__setattr__(props, "_fixed", packed[prefix:])
            return props
    raise AssertionError("unreachable")  # pragma: no cover


_PUBLISH_PROPERTIES = _publish_template()
_USER_PROPERTY = bytes(VariableByteIntegers.encode(38)) + writeUTF(IDENTIFIER_PROPERTY)  # type: ignore[no-untyped-call]


def publish_properties(identifier: str) -> Any:
    """The PUBLISH properties of one reading (content type, UTF-8 payload, the identifier)."""
    props = copy.copy(_PUBLISH_PROPERTIES)
    object.__setattr__(props, "UserProperty", [(IDENTIFIER_PROPERTY, identifier)])
    pair = _USER_PROPERTY + writeUTF(identifier)  # type: ignore[no-untyped-call]
    object.__setattr__(props, "_body", props._fixed + pair)
    return props


def _varint_len(value: int) -> int:
    size = 1
    while value >= 128:
        value //= 128
        size += 1
    return size


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


class _Publishing(NamedTuple):
    """A message paho took: its id and the future its PUBACK reason code completes."""

    mid: int
    future: asyncio.Future[int]


class MqttUplink:
    """Publishes envelopes to an MQTT 5 broker with paho-mqtt; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        host: str,
        port: int,
        client_id: str,
        gateway_id: str,
        topic_prefix: str = "edge",
        tls: MqttTls | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        publish_timeout: float = 10.0,
        max_inflight: int = 20,
        session_expiry: int = 86_400,
        max_payload: int = 256 * 1024,
        require_subscriber: bool = True,
    ) -> None:
        if not client_id:
            raise ValueError("client_id must be a stable, non-empty id")
        if not gateway_id or _TOPIC_FORBIDDEN & set(gateway_id):
            raise ValueError("gateway_id must be one topic level without wildcards")
        if not topic_prefix or {"+", "#", "\x00"} & set(topic_prefix):
            raise ValueError("topic_prefix must be non-empty and without wildcards")
        if not 1 <= max_inflight <= 65_535:
            raise ValueError("max_inflight must be between 1 and 65535")
        if publish_timeout <= 0:
            raise ValueError("publish_timeout must be positive")
        self.name = name
        self.host = host
        self.port = port
        self.client_id = client_id
        self.gateway_id = gateway_id
        self.topic_prefix = topic_prefix.rstrip("/")
        self.tls = tls
        self.username = username
        self.password = password
        self.keepalive = keepalive
        self.publish_timeout = publish_timeout
        self.max_inflight = max_inflight
        self.session_expiry = session_expiry
        self.max_payload = max_payload
        self.require_subscriber = require_subscriber

        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[int]] = {}
        # Publishes awaiting their PUBACK, bounded by max_inflight and the broker's Receive Maximum.
        self._inflight = 0
        self._window_limit = max_inflight
        self._slot_waiters: list[asyncio.Future[None]] = []
        # PUBACKs from paho's thread, handed to the loop in bunches (one wake-up for many)
        self._acks: collections.deque[tuple[int, int]] = collections.deque()
        self._acks_scheduled = False
        self._connected = asyncio.Event()
        self._broker_max_packet: int | None = None
        self._was_connected = False

    # ---- topics and sizes

    def topic_for(self, kind: str) -> str:
        return f"{self.topic_prefix}/{self.gateway_id}/readings/{kind}"

    def _packet_size(self, topic: str, envelope: Envelope) -> int:
        """Size of the PUBLISH packet this envelope becomes (QoS 1, our properties)."""
        props = (
            (1 + 2 + len(CONTENT_TYPE))
            + 2  # payload format indicator
            + (1 + 2 + len(IDENTIFIER_PROPERTY) + 2 + _utf8_len(envelope.idem_key))
        )
        remaining = 2 + _utf8_len(topic) + 2 + _varint_len(props) + props + len(envelope.body)
        return 1 + _varint_len(remaining) + remaining

    # ---- life cycle

    async def start(self) -> None:
        """Begin connecting in paho's thread; returns at once, even if the broker is down."""
        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
        )
        if self.tls is not None:
            try:
                client.tls_set(
                    ca_certs=str(self.tls.ca_file),
                    certfile=None if self.tls.cert_file is None else str(self.tls.cert_file),
                    keyfile=None if self.tls.key_file is None else str(self.tls.key_file),
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise UplinkError(f"mqtt uplink {self.name}: bad TLS files: {exc}") from exc
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        client.max_inflight_messages_set(self.max_inflight)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry
        client.connect_async(
            self.host, self.port, keepalive=self.keepalive, clean_start=False, properties=props
        )
        client.loop_start()
        self._client = client
        log.info("mqtt uplink %s: connecting to %s:%d", self.name, self.host, self.port)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
            log.info("mqtt uplink %s: closed", self.name)
        self._connected.clear()
        self._fail_pending("uplink closed before the PUBACK")

    @property
    def window(self) -> int:
        """Publishes allowed to await their PUBACK at once (max_inflight, or the broker's
        Receive Maximum when that is lower)."""
        return self._window_limit

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

    async def wait_connected(self) -> None:
        """Return once connected to the broker (wrap in ``asyncio.timeout``). The event lags
        paho's own state by one callback hop (a disconnect not yet seen here leaves it set), so
        the client's state must agree too."""
        while not (self._connected.is_set() and self.connected):
            if self._connected.is_set():
                await asyncio.sleep(0.02)
            else:
                await self._connected.wait()

    # ---- sending

    async def send(self, batch: Sequence[Envelope]) -> list[Outcome]:
        """Publish the batch, at most ``window`` awaiting their PUBACK at once (shared with
        concurrent sends); one outcome per envelope. The PUBACKs are awaited together, for at
        most ``publish_timeout`` after the last publish."""
        answered: dict[int, tuple[OutcomeStatus, str]] = {}
        waiting: list[tuple[Envelope, int, asyncio.Future[int]]] = []
        for envelope in batch:
            await self._take_slot()
            try:
                started = self._publish(envelope)
            except BaseException:
                self._give_slot()
                raise
            if isinstance(started, _Publishing):
                started.future.add_done_callback(self._give_slot)
                waiting.append((envelope, started.mid, started.future))
            else:
                self._give_slot()
                answered[envelope.id] = started
        if waiting:
            await asyncio.wait([f for _, _, f in waiting], timeout=self.publish_timeout)
        for envelope, mid, future in waiting:
            if not future.done():
                if self._pending.get(mid) is future:
                    del self._pending[mid]
                future.cancel()  # gives its slot back
                answered[envelope.id] = (
                    OutcomeStatus.RETRY,
                    f"no PUBACK within {self.publish_timeout:g} s",
                )
            elif future.cancelled() or future.exception() is not None:
                answered[envelope.id] = (OutcomeStatus.RETRY, str(future.exception() or "closed"))
            else:
                answered[envelope.id] = classify_puback(
                    future.result(), require_subscriber=self.require_subscriber
                )
        return [
            Outcome(envelope_id=e.id, status=answered[e.id][0], reason=answered[e.id][1])
            for e in batch
        ]

    async def _take_slot(self) -> None:
        while self._inflight >= self._window_limit:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(waiter)
        self._inflight += 1

    def _give_slot(self, _done: object = None) -> None:
        self._inflight -= 1
        waiters, self._slot_waiters = self._slot_waiters, []
        for waiter in waiters:  # each looks again; the ones that find no room wait again
            if not waiter.done():
                waiter.set_result(None)

    def _publish(self, envelope: Envelope) -> tuple[OutcomeStatus, str] | _Publishing:
        """Hand one message to paho: its outcome when settled at once, else (mid, the future
        its PUBACK code will complete)."""
        client = self._client
        if client is None or not client.is_connected():
            return OutcomeStatus.RETRY, "broker unreachable"
        if not envelope.kind or _TOPIC_FORBIDDEN & set(envelope.kind):
            return OutcomeStatus.REJECTED, "reading kind cannot be used as a topic level"
        topic = self.topic_for(envelope.kind)
        size = len(envelope.body)
        if size > self.max_payload:
            return OutcomeStatus.REJECTED, f"payload of {size} bytes exceeds max_payload"
        broker_max = self._broker_max_packet
        if broker_max is not None and self._packet_size(topic, envelope) > broker_max:
            return OutcomeStatus.REJECTED, "message exceeds the broker's maximum packet size"

        try:
            info = client.publish(
                topic, envelope.body, qos=1, properties=publish_properties(envelope.idem_key)
            )
        except ValueError as exc:
            return OutcomeStatus.REJECTED, f"MQTT client refused the message: {exc}"
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            # paho keeps it queued and may deliver it after reconnecting; it is not counted.
            return OutcomeStatus.RETRY, "connection lost while publishing"
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return OutcomeStatus.RETRY, f"publish failed: {mqtt.error_string(info.rc)}"
        # Registered before any await: the PUBACK is handled on this loop, after us.
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[info.mid] = future
        return _Publishing(info.mid, future)

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionError(reason))

    # ---- paho callbacks (network thread): hand over to the event loop, nothing else

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        # RuntimeError: the event loop is closed, nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, *args)

    def _on_connect(
        self, _client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        max_packet = getattr(props, "MaximumPacketSize", None)
        receive_max = getattr(props, "ReceiveMaximum", None)
        session = bool(getattr(flags, "session_present", False))
        self._post(self._connected_now, reason.value, str(reason), session, max_packet, receive_max)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._post(self._connect_failed)

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._post(self._disconnected_now, str(reason))

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reason: Any, _props: Any
    ) -> None:
        self._acks.append((mid, int(reason.value)))
        if not self._acks_scheduled:  # the loop resets the flag before it drains the queue
            self._acks_scheduled = True
            self._post(self._pubacks)

    # ---- the same events, on the event loop

    def _connected_now(
        self,
        code: int,
        text: str,
        session_present: bool,
        max_packet: int | None,
        receive_max: int | None,
    ) -> None:
        if code >= 0x80:
            log.warning("mqtt uplink %s: broker refused the connection: %s", self.name, text)
            return
        self._broker_max_packet = max_packet if isinstance(max_packet, int) else None
        # paho ignores the broker's Receive Maximum (and cannot change its own limit once
        # connected): keep our window within it.
        limit = self.max_inflight
        if isinstance(receive_max, int) and 0 < receive_max < limit:
            log.warning(
                "mqtt uplink %s: broker Receive Maximum %d is below max_inflight %d; using it",
                self.name,
                receive_max,
                limit,
            )
            limit = receive_max
        self._window_limit = limit
        self._was_connected = True
        self._connected.set()
        log.info(
            "mqtt uplink %s: connected to %s:%d (session present: %s)",
            self.name,
            self.host,
            self.port,
            session_present,
        )

    def _connect_failed(self) -> None:
        log.debug("mqtt uplink %s: connection attempt failed", self.name)

    def _disconnected_now(self, text: str) -> None:
        self._connected.clear()
        if self._was_connected:
            self._was_connected = False
            if self._client is None:
                log.info("mqtt uplink %s: disconnected (%s)", self.name, text)
            else:
                log.warning("mqtt uplink %s: disconnected (%s), reconnecting", self.name, text)
        self._fail_pending("connection lost before the PUBACK")

    def _pubacks(self) -> None:
        self._acks_scheduled = False
        while self._acks:
            mid, code = self._acks.popleft()
            future = self._pending.pop(mid, None)
            if future is not None and not future.done():
                future.set_result(code)
