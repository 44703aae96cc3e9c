"""A real FHIR R4 server for the tests: ``tests/fhir_server/server.mjs`` (Medplum, in memory).

Started on a free loopback port with HTTPS, certificates made on the fly (``make_tls_files``).
Every resource written is validated (base R4, the R4 core profiles it claims such as the vital
signs, required bindings); PHD IG profiles are not in the package: they are skipped and listed
by ``skipped_profiles()``. Needs ``node`` and ``tests/fhir_server/node_modules``: run
``make test-deps``.

Register the fixtures in a folder's ``conftest.py`` (``fhir_server`` uses
``fhir_server_session``)::

    from tests.support.fhir_server import fhir_server, fhir_server_factory, fhir_server_session

then in tests::

    def test_upload(fhir_server):                   # shared server, emptied for this test
        fhir_server.post_bundle(bundle)             # or any client with verify=ssl_context()
        fhir_server.search("Observation", identifier=f"{system}|{value}")
        fhir_server.inject(503, retry_after=1)      # the next request gets 503 + Retry-After

    def test_auth(fhir_server_factory):             # own server with options
        server = fhir_server_factory(bearer_token="s3cret", require_client_cert=True)

    def test_oauth(fhir_server_factory):            # an OAuth2 token endpoint at /token
        server = fhir_server_factory(oauth_clients=[{"client_id": "gw", "secret": "x"}])
        token = server.request_token("gw", "x")     # or the client under test, at token_url
        server.expire_tokens()                      # every issued token now gets 401
        server.token_stats()                        # {"granted": 1, "rejected": 0}

Start-up takes about 1.5 s (Medplum indexes the R4 definitions), so ``fhir_server`` is one
server per session, reset before each test; ``fhir_server_factory`` starts fresh ones.
Outside fixtures: ``with FhirServer(tmp_dir) as server: ...``. Data lives in memory: ``stop()`` /
``restart()`` empty it (the port stays the same).
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.serialize import dumps
from tests.support.mosquitto import HOST, TlsFiles, make_tls_files

SERVER_DIR = Path(__file__).resolve().parent.parent / "fhir_server"
SCRIPT = SERVER_DIR / "server.mjs"
NODE_MODULES = SERVER_DIR / "node_modules"
TOOLS = Path(__file__).resolve().parents[2] / ".tools"  # a pinned node when the system's is old


class FhirServerError(RuntimeError):
    """The FHIR test server is missing or did not start (its log tail is in the message)."""


@functools.cache
def _node() -> str:
    """The node binary, or a clear error: CI must not silently skip the FHIR tests."""
    tools = sorted(TOOLS.glob("node_modules/node-linux-*/bin/node"))  # make test-deps' own
    node = str(tools[0]) if tools else shutil.which("node")
    if node is None:
        raise FhirServerError("node is not installed: run `make test-deps`")
    version = subprocess.run(
        [node, "-p", "process.versions.node"], capture_output=True, text=True, check=True
    ).stdout.strip()
    major, minor = (int(part) for part in version.split(".")[:2])
    if not (major > 22 or (major, minor) >= (22, 12) or (major == 20 and minor >= 19)):
        raise FhirServerError(
            f"node {version} is too old for Medplum 4.5.2 (needs 20.19+ or 22.12+): "
            "install a newer nodejs, then run `make test-deps`"
        )
    if not (NODE_MODULES / "@medplum" / "fhir-router").is_dir():
        raise FhirServerError(f"{NODE_MODULES} is missing or incomplete: run `make test-deps`")
    return node


def parse_json(data: bytes) -> Any:
    """JSON with decimals as ``Decimal`` (the server sends numbers; compare them exactly)."""
    return json.loads(data, parse_float=Decimal)


class FhirServer:
    """One ``server.mjs`` process with its own PKI and log under ``workdir``.

    Options: ``tls`` (HTTPS, default), ``require_client_cert`` (mutual TLS with ``tls.client_*``),
    ``bearer_token`` (every request needs it; the helpers send it), ``oauth_clients`` (env
    ``OAUTH_CLIENTS``: serve ``POST /token``; FHIR requests then need an issued token, or
    ``bearer_token`` when given too) with ``oauth_token_ttl`` (seconds, default 300). Each client
    is ``{"client_id", "secret"}`` (client_secret_basic / _post) or ``{"client_id", "jwk"}`` /
    ``{"client_id", "public_key_pem"}`` (private_key_jwt, RS384 or ES384); the rules are in
    ``server.mjs``. The test-control helpers need no OAuth token, so they work either way.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        tls: bool = True,
        require_client_cert: bool = False,
        bearer_token: str | None = None,
        oauth_clients: list[dict[str, Any]] | None = None,
        oauth_token_ttl: float | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls: TlsFiles | None = make_tls_files(workdir / "pki") if tls else None
        self.require_client_cert = require_client_cert
        self.bearer_token = bearer_token
        self.oauth_clients = oauth_clients
        self.oauth_token_ttl = oauth_token_ttl
        self.host = HOST
        self.port = 0  # the first start takes any free port; restarts reuse it
        self.log_path = workdir / "fhir-server.log"
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    # ---- addresses and clients

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        """The OAuth2 token endpoint, exactly as the server expects it in an assertion's aud."""
        return f"{self.base_url}/token"

    @property
    def ca_file(self) -> str | None:
        return str(self.tls.ca_cert) if self.tls is not None else None

    def ssl_context(self, *, client_cert: bool | None = None) -> ssl.SSLContext:
        """Trusts the test CA; presents the client certificate when ``client_cert`` (default:
        when the server requires one)."""
        if self.tls is None:
            raise FhirServerError("this server does not use TLS")
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        if self.require_client_cert if client_cert is None else client_cert:
            context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        return context

    def client(self, **options: Any) -> httpx.Client:
        """A new httpx client that trusts the test CA (with the client cert and token if needed)."""
        headers = dict(options.pop("headers", {}))
        if self.bearer_token is not None:
            headers.setdefault("Authorization", f"Bearer {self.bearer_token}")
        if self.tls is not None:
            options.setdefault("verify", self.ssl_context())
        options.setdefault("timeout", 10.0)
        return httpx.Client(base_url=self.base_url, headers=headers, **options)

    @property
    def http(self) -> httpx.Client:
        """The helpers' own client (reconnects by itself after a restart)."""
        if self._client is None:
            self._client = self.client()
        return self._client

    # ---- life cycle

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        node = _node()
        env = {
            **os.environ,
            "PORT": str(self.port),
            "HOST": self.host,
        }
        for name in (
            "TLS_CERT",
            "TLS_KEY",
            "TLS_CA",
            "TLS_REQUIRE_CLIENT_CERT",
            "BEARER_TOKEN",
            "OAUTH_CLIENTS",
            "OAUTH_TOKEN_TTL",
        ):
            env.pop(name, None)  # nothing inherited from the caller's environment
        if self.tls is not None:
            env |= {
                "TLS_CERT": str(self.tls.server_cert),
                "TLS_KEY": str(self.tls.server_key),
                "TLS_CA": str(self.tls.ca_cert),
            }
            if self.require_client_cert:
                env["TLS_REQUIRE_CLIENT_CERT"] = "1"
        if self.bearer_token is not None:
            env["BEARER_TOKEN"] = self.bearer_token
        if self.oauth_clients is not None:
            env["OAUTH_CLIENTS"] = json.dumps(self.oauth_clients)
        if self.oauth_token_ttl is not None:
            env["OAUTH_TOKEN_TTL"] = str(self.oauth_token_ttl)
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [node, str(SCRIPT)],
                cwd=SERVER_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self.port = self._wait_ready(timeout)
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, timeout: float) -> int:
        """Read stdout up to the ``READY <port>`` line."""
        process = self._process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stop()
                    raise FhirServerError(f"no READY after {timeout}s:\n{self.log_tail()}")
                if selector.select(remaining):
                    chunk = os.read(process.stdout.fileno(), 256)
                    if not chunk:
                        self.stop()
                        raise FhirServerError(f"server exited early:\n{self.log_tail()}")
                    buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode()
        word, _, port = line.partition(" ")
        if word != "READY" or not port.isdigit():
            self.stop()
            raise FhirServerError(f"unexpected first line {line!r}:\n{self.log_tail()}")
        return int(port)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then wait (SIGKILL after ``timeout``). The data is gone."""
        if self._client is not None:
            self._client.close()
            self._client = None
        process = self._process
        self._process = None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if process.stdout is not None:
            process.stdout.close()

    def restart(self, timeout: float = 30.0) -> None:
        """Stop, then start again on the same port (empty repository)."""
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> FhirServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- test control

    def inject(
        self,
        status: int,
        count: int = 1,
        retry_after: int | None = None,
        *,
        path: str | None = None,
        error: str | None = None,
    ) -> None:
        """The next ``count`` FHIR requests get ``status`` (and ``Retry-After`` when given).

        ``path``: only requests under this path prefix (``"/Observation"``), or ``"/token"``: only
        the token endpoint (which faults injected without ``path`` leave alone); ``error`` is
        then the OAuth ``error`` code of the reply (default from the status). One pending fault
        per path; ``count=0`` clears it.
        """
        spec: dict[str, Any] = {"status": status, "count": count}
        if retry_after is not None:
            spec["retry_after"] = retry_after
        if path is not None:
            spec["path"] = path
        if error is not None:
            spec["error"] = error
        self.http.post("/$test/faults", json=spec).raise_for_status()

    def reset(self) -> None:
        """Empty the repository, clear pending faults and the skipped-profile record, forget
        the issued tokens and used assertion ids, zero the token counters."""
        self.http.post("/$test/reset").raise_for_status()

    def expire_tokens(self) -> int:
        """Expire every issued OAuth access token now; how many there were."""
        response = self.http.post("/$test/expire-tokens")
        response.raise_for_status()
        expired: int = response.json()["expired"]
        return expired

    def token_stats(self) -> dict[str, int]:
        """``{"granted": n, "rejected": m}``: token endpoint answers since start or reset
        (injected faults not counted)."""
        response = self.http.get("/$test/token-requests")
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        return stats

    def request_token(self, client_id: str, secret: str, scope: str | None = None) -> str:
        """An access token for a secret client (client_secret_basic); raises on refusal."""
        form = {"grant_type": "client_credentials"} | ({"scope": scope} if scope else {})
        with self.client() as client:
            response = client.post(self.token_url, data=form, auth=(client_id, secret))
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def skipped_profiles(self) -> dict[str, int]:
        """meta.profile URLs the server could not validate against, with resource counts."""
        response = self.http.get("/$test/profiles")
        response.raise_for_status()
        skipped: dict[str, int] = response.json()["skipped"]
        return skipped

    # ---- FHIR helpers

    def post(
        self, path: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """POST a resource as the gateway would (``Decimal`` written exactly); no status check."""
        return self.http.post(
            "/" + path.lstrip("/"),
            content=dumps(body),
            headers={"Content-Type": "application/fhir+json", **(headers or {})},
        )

    def post_bundle(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        """POST a Bundle to the base URL; the response Bundle (raises on an HTTP error)."""
        response = self.post("/", bundle)
        response.raise_for_status()
        result: dict[str, Any] = parse_json(response.content)
        return result

    def get(self, path: str) -> dict[str, Any]:
        """GET ``path`` (``Device/123``, ``metadata``...) and return the JSON; raises on errors."""
        response = self.http.get("/" + path.lstrip("/"))
        response.raise_for_status()
        result: dict[str, Any] = parse_json(response.content)
        return result

    def search(
        self, resource_type: str, params: Mapping[str, str] | None = None, **more: str
    ) -> list[dict[str, Any]]:
        """Resources matching a search (up to 1000); ``params`` for names that are not Python
        identifiers (``{"subject:identifier": "system|value"}``). Reference parameters match
        ``Type/id`` or, with ``:identifier``, a logical reference; a bare id matches nothing."""
        query = {"_count": "1000", **(params or {}), **more}
        bundle = self.get(f"{resource_type}?{httpx.QueryParams(query)}")
        found = [entry["resource"] for entry in bundle.get("entry", [])]
        if bundle.get("total", 0) > len(found):
            raise FhirServerError(f"{bundle['total']} results, only {len(found)} returned")
        return found


__all__ = [
    "FhirServer",
    "FhirServerError",
    "fhir_server",
    "fhir_server_factory",
    "fhir_server_session",
    "parse_json",
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def fhir_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirServer]:
    """One HTTPS server for the whole session (start-up costs ~1.5 s)."""
    with FhirServer(tmp_path_factory.mktemp("fhir-server")) as server:
        yield server


@pytest.fixture
def fhir_server(fhir_server_session: FhirServer) -> FhirServer:
    """The session's server, running and empty (no data, no pending faults)."""
    if not fhir_server_session.running:  # a previous test stopped it
        fhir_server_session.start()
    fhir_server_session.reset()
    return fhir_server_session


@pytest.fixture
def fhir_server_factory(tmp_path: Path) -> Iterator[Callable[..., FhirServer]]:
    """Call with ``FhirServer`` options to get a started server of its own; all stopped after."""
    servers: list[FhirServer] = []

    def make(**options: Any) -> FhirServer:
        server = FhirServer(tmp_path / f"fhir-server-{len(servers)}", **options)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()
