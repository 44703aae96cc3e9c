"""A private mosquitto per test, TLS material made on the fly, and a recording subscriber.

Nothing here touches the machine's own broker (port 1883): every broker gets free loopback
ports, its own config, log and (optional) persistence directory under the test's tmp dir.

Use from a test folder's ``conftest.py``::

    from tests.support.mosquitto import mosquitto, mosquitto_factory  # noqa: F401

then in tests::

    def test_plain(mosquitto):                      # started, plain listener only
        client.connect(mosquitto.host, mosquitto.port)

    def test_options(mosquitto_factory):            # any options, started for you
        broker = mosquitto_factory(acl="topic write edge/#\\n", tls=True)
        broker.tls_port, broker.tls_files.ca_cert ...

Outside fixtures: ``with mosquitto_broker(tmp_dir, persistence=True) as broker: ...``.
Brokers can be ``stop()``-ed, ``restart()``-ed on the same ports, ``kill()``-ed (SIGKILL) and
``pause()``-d / ``resume()``-d (SIGSTOP / SIGCONT: the TCP connection stays up, nothing answers).

``issue_client_certificate(broker.tls_files, "GW-1")`` makes one more client certificate from
the broker's CA, e.g. one per identity for an ACL keyed on ``use_identity_as_username``.

``Subscriber`` is an independent paho MQTT 5 client that records what it receives, with the
``identifier`` user property, so a test can check "each reading exactly once after dedup".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HOST = "127.0.0.1"
_FORBIDDEN_PORTS = {1883, 8883}


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (never the system broker's)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in _FORBIDDEN_PORTS:
            return port


# --------------------------------------------------------------------------- TLS material


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throw-away PKI: one CA, a server cert for localhost/127.0.0.1, a client."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_cn: str


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _issue(
    subject_cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    is_ca: bool = False,
    server_names: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if is_ca:
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
    else:
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=True,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
    builder = builder.add_extension(usage, critical=True)
    if server_names:
        alt: list[x509.GeneralName] = []
        for entry in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                alt.append(x509.DNSName(entry))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls_files(directory: Path, *, client_cn: str = "edge-test-gateway") -> TlsFiles:
    """Generate a CA, a server certificate (localhost, 127.0.0.1) and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("edge test CA", ca_key, None, is_ca=True)
    issuer = (ca_cert.subject, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue("localhost", server_key, issuer, server_names=("localhost", HOST))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue(client_cn, client_key, issuer, client=True)

    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        client_cn=client_cn,
    )
    pem = serialization.Encoding.PEM
    files.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    files.server_cert.write_bytes(server_cert.public_bytes(pem))
    files.client_cert.write_bytes(client_cert.public_bytes(pem))
    _write_key(files.ca_key, ca_key)
    _write_key(files.server_key, server_key)
    _write_key(files.client_key, client_key)
    return files


def issue_client_certificate(
    files: TlsFiles, common_name: str, directory: Path | None = None
) -> tuple[Path, Path]:
    """One more client certificate from the same CA (e.g. one per gateway or bridge identity):
    ``(cert, key)`` PEM files named after ``common_name`` in ``directory`` (default: the CA's)."""
    directory = directory or files.ca_cert.parent
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(common_name, key, (ca_cert.subject, ca_key), client=True)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in common_name)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return cert_path, key_path


# --------------------------------------------------------------------------- the broker


class BrokerError(RuntimeError):
    """The private broker did not start (its log tail is in the message)."""


class MosquittoBroker:
    """One private mosquitto process, its config and log under ``workdir``.

    Options:
      * ``tls``: add a TLS listener on ``tls_port`` with generated material (``tls_files``);
      * ``require_certificate``: clients of the TLS listener must present a cert from that CA;
      * ``use_identity_as_username``: on the TLS listener, the client certificate's CN is the
        username (what ``%u`` in an ACL pattern and ``user`` lines match);
      * ``acl``: text of an ``acl_file`` (mosquitto syntax), applied to every listener;
      * ``persistence``: keep the broker's state in ``workdir/data`` across ``restart()``;
      * ``message_size_limit``: larger payloads get PUBACK 0x83 (v5 clients);
      * ``extra_config``: more lines for the global section;
      * ``listener_config``: more lines for every listener (e.g. ``max_connections 10``).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        tls: bool = False,
        require_certificate: bool = False,
        use_identity_as_username: bool = False,
        acl: str | None = None,
        persistence: bool = False,
        message_size_limit: int | None = None,
        extra_config: str = "",
        listener_config: str = "",
        executable: str = MOSQUITTO,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = free_port()
        self.tls_port: int | None = free_port() if tls else None
        self.tls_files: TlsFiles | None = make_tls_files(workdir / "pki") if tls else None
        self.require_certificate = require_certificate
        self.use_identity_as_username = use_identity_as_username
        self.listener_config = listener_config
        self.acl = acl
        self.persistence = persistence
        self.message_size_limit = message_size_limit
        self.extra_config = extra_config
        self.executable = executable
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._write_config()

    # ---- config

    def _write_config(self) -> None:
        lines = [
            "# private broker for one test; written by tests/support/mosquitto.py",
            "per_listener_settings false",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto would switch to the "mosquitto" user and lose access to the
            # files in the tmp dir.
            lines.append("user root")
        if self.persistence:
            data = self.workdir / "data"
            data.mkdir(exist_ok=True)
            lines.append(f"persistence_location {data}/")
        if self.acl is not None:
            acl_path = self.workdir / "acl"
            acl_path.write_text(self.acl)
            lines.append(f"acl_file {acl_path}")
        if self.message_size_limit is not None:
            lines.append(f"message_size_limit {self.message_size_limit}")
        if self.extra_config:
            lines.append(self.extra_config.strip())
        lines.append(f"listener {self.port} {self.host}")
        if self.listener_config:
            lines.append(self.listener_config.strip())
        if self.tls_port is not None and self.tls_files is not None:
            files = self.tls_files
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {files.ca_cert}",
                f"certfile {files.server_cert}",
                f"keyfile {files.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
            if self.use_identity_as_username:
                lines.append("use_identity_as_username true")
            if self.listener_config:
                lines.append(self.listener_config.strip())
        self.config_path.write_text("\n".join(lines) + "\n")

    # ---- life cycle

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [self.executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        self._paused = False
        self._wait_listening(timeout)

    def _ports(self) -> list[int]:
        return [self.port] + ([self.tls_port] if self.tls_port is not None else [])

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = self._ports()
        while pending:
            if not self.running:
                raise BrokerError(f"mosquitto exited early:\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, pending[0]), timeout=0.5):
                    pending.pop(0)
                    continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"mosquitto not listening after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then wait (SIGKILL if it does not exit within ``timeout``)."""
        process = self._process
        if process is None or process.poll() is not None:
            self._process = None
            return
        if self._paused:
            self.resume()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        self._process = None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final persistence save."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait(10)
        self._process = None
        self._paused = False

    def restart(self, timeout: float = 10.0) -> None:
        """Stop, then start again on the same ports with the same config."""
        self.stop()
        self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but the broker answers nothing."""
        if self._process is not None and self.running:
            self._process.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._process is not None and self._paused:
            self._process.send_signal(signal.SIGCONT)
            self._paused = False

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def mosquitto_broker(workdir: Path, **options: Any) -> Iterator[MosquittoBroker]:
    """Start a private broker (see ``MosquittoBroker`` for options); stop it on exit."""
    broker = MosquittoBroker(workdir, **options)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A started private broker with a plain loopback listener and default options."""
    with mosquitto_broker(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Call with ``MosquittoBroker`` options to get a started broker; all stopped at the end."""
    brokers: list[MosquittoBroker] = []

    def make(**options: Any) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / f"mosquitto-{len(brokers)}", **options)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


# --------------------------------------------------------------------------- subscriber


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    identifier: str | None
    content_type: str | None
    user_properties: tuple[tuple[str, str], ...]


@dataclass
class Subscriber:
    """A recording MQTT 5 subscriber with its own client id; resubscribes on every connect.

    ``clean_start`` is False with a session expiry, so with a persistent broker it also gets
    what was queued for it while it was away.
    """

    host: str
    port: int
    topic: str = "#"
    qos: int = 1
    client_id: str = field(default_factory=lambda: f"test-sub-{uuid.uuid4().hex[:12]}")
    tls: TlsFiles | None = None
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
        )
        client.reconnect_delay_set(1, 2)
        if self.tls is not None:
            client.tls_set(
                ca_certs=str(self.tls.ca_cert),
                certfile=str(self.tls.client_cert),
                keyfile=str(self.tls.client_key),
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=self.qos)

    def _on_disconnect(self, *_args: object) -> None:
        self._subscribed.clear()

    def _on_subscribe(self, _c: object, _u: object, _mid: int, codes: Any, _p: object) -> None:
        if all(not code.is_failure for code in codes):
            self._subscribed.set()

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        user = tuple(getattr(props, "UserProperty", ()) or ())
        identifier = next((value for key, value in user if key == "identifier"), None)
        received = Received(
            topic=message.topic,
            payload=bytes(message.payload),
            qos=message.qos,
            identifier=identifier,
            content_type=getattr(props, "ContentType", None),
            user_properties=user,
        )
        with self._cond:
            self.messages.append(received)
            self._cond.notify_all()

    def start(self, timeout: float = 5.0) -> Subscriber:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 300
        self._client.connect_async(
            self.host, self.port, keepalive=30, clean_start=False, properties=props
        )
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError("subscriber did not get its SUBACK")
        return self

    def wait_subscribed(self, timeout: float = 5.0) -> bool:
        """True once (re)connected and (re)subscribed, e.g. after a broker restart."""
        return self._subscribed.wait(timeout)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Block until at least ``count`` messages arrived; returns a copy of them."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def identifiers(self) -> Counter[str | None]:
        with self._cond:
            return Counter(message.identifier for message in self.messages)

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
