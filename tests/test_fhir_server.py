"""The test FHIR server (``tests/support/fhir_server.py``) against the project's own bundles.

Everything goes over HTTPS to the real server process: the mapper's transaction Bundles are
accepted, stored as sent and found again; conditional creates do not duplicate; invalid entries
are refused alone; faults, bearer auth, TLS and the OAuth2 token endpoint (client secrets and
SMART private_key_jwt assertions, signed here by hand) behave as the uplink tests need.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from drivers.models import DeviceIdentity, Quantity, Reading
from mappers.phd import map_reading, transaction_bundle
from tests.mappers.factories import GATEWAY, PATIENT, quantity, reading
from tests.support import fhir_server as fhir_support
from tests.support.fhir_server import FhirServer, parse_json

# The fixtures, for this module (tests/conftest.py does not exist; folders register their own).
fhir_server = fhir_support.fhir_server
fhir_server_factory = fhir_support.fhir_server_factory
fhir_server_session = fhir_support.fhir_server_session

BODYWEIGHT = "http://hl7.org/fhir/StructureDefinition/bodyweight"
BP = "http://hl7.org/fhir/StructureDefinition/bp"
PHD = "http://hl7.org/fhir/uv/phd/StructureDefinition/"

BPM = DeviceIdentity(
    address="C4:7C:8D:6A:1F:02",
    system_id="C47C8DFFFE6A1F02",
    manufacturer="ACME Health",
    model="BP-7",
    firmware="1.0.3",
)


def mmhg(name: str, value: str) -> Quantity:
    return quantity(name, value, "mm[Hg]")


def bp_reading() -> Reading:
    return reading(
        mmhg("systolic", "121"),
        mmhg("diastolic", "79"),
        mmhg("mean-arterial-pressure", "93"),
        quantity("pulse-rate", "72", "/min"),
        kind="blood-pressure",
        device=BPM,
    )


def weight_and_bp_bundle() -> dict[str, Any]:
    """What the gateway sends for a scale reading and a BP reading: 3 Devices, 3 Observations.
    A deep copy: the mapper shares frozen Device entries, tests here spoil some entries."""
    entries = map_reading(reading(), PATIENT, GATEWAY) + map_reading(bp_reading(), PATIENT, GATEWAY)
    return copy.deepcopy(transaction_bundle(entries))


def statuses(response: dict[str, Any]) -> list[str]:
    """Per-entry HTTP status codes ("201 Created" and "201" both give "201")."""
    return [entry["response"]["status"].split(" ")[0] for entry in response["entry"]]


def entry_with(bundle: dict[str, Any], profile: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        e for e in bundle["entry"] if profile in e["resource"]["meta"]["profile"]
    ]
    assert len(found) == 1, profile
    return found[0]


def by_identifier(server: FhirServer, resource: dict[str, Any]) -> list[dict[str, Any]]:
    identifier = resource["identifier"][0]
    token = f"{identifier['system']}|{identifier['value']}"
    return server.search(resource["resourceType"], identifier=token)


def resolved(node: Any, locations: dict[str, str]) -> Any:
    """``node`` with bundle-internal ``urn:uuid`` references replaced by the server's ids."""
    if isinstance(node, dict):
        return {
            key: locations.get(value, value)
            if key == "reference" and isinstance(value, str)
            else resolved(value, locations)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [resolved(item, locations) for item in node]
    return node


def as_sent(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored resource without what the server adds (id, meta.versionId / lastUpdated)."""
    out = {key: value for key, value in stored.items() if key != "id"}
    out["meta"] = {k: v for k, v in stored["meta"].items() if k not in {"versionId", "lastUpdated"}}
    return out


# --------------------------------------------------------------------------- mapped bundles


def test_mapped_transaction_is_stored_as_sent(fhir_server: FhirServer) -> None:
    bundle = weight_and_bp_bundle()
    response = fhir_server.post_bundle(bundle)

    assert response["type"] in {"transaction-response", "batch-response"}
    assert statuses(response) == ["201"] * len(bundle["entry"])
    locations = {
        sent["fullUrl"]: got["response"]["location"].split("/_history")[0]
        for sent, got in zip(bundle["entry"], response["entry"], strict=True)
    }
    sent_observations = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    ]
    assert len(sent_observations) == 3  # weight, BP panel, pulse

    for sent in sent_observations:
        (stored,) = by_identifier(fhir_server, sent)
        # Values, codes, units, subject, times: all as sent (decimals compared as numbers);
        # only the bundle-internal references now name the created Devices.
        assert as_sent(stored) == resolved(sent, locations)
        device = fhir_server.get(stored["device"]["reference"])
        assert device["resourceType"] == "Device"
        sent_device = next(
            e for e in bundle["entry"] if e["fullUrl"] == sent["device"]["reference"]
        )
        assert device["identifier"] == sent_device["resource"]["identifier"]
        (gateway_ref,) = [x["valueReference"]["reference"] for x in stored["extension"]]
        assert fhir_server.get(gateway_ref)["meta"]["profile"] == [PHD + "PhgDevice"]

    (weight,) = by_identifier(fhir_server, entry_with(bundle, BODYWEIGHT)["resource"])
    assert weight["valueQuantity"] == {
        "value": Decimal("65.700"),
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    }
    (panel,) = by_identifier(fhir_server, entry_with(bundle, BP)["resource"])
    assert [
        (c["code"]["coding"][1]["code"], c["valueQuantity"]["value"], c["valueQuantity"]["code"])
        for c in panel["component"]
    ] == [("8480-6", 121, "mm[Hg]"), ("8462-4", 79, "mm[Hg]"), ("8478-0", 93, "mm[Hg]")]

    # The gateway names the patient by identifier only: that search finds all three.
    patient = {"subject:identifier": f"{PATIENT.system}|{PATIENT.value}"}
    assert len(fhir_server.search("Observation", patient)) == 3
    assert len(fhir_server.search("Device")) == 3  # PhgDevice, scale, BP monitor
    # PHD IG profiles are not in the server's package: recorded, not validated.
    assert set(fhir_server.skipped_profiles()) == {
        PHD + name
        for name in (
            "PhgDevice",
            "PhdDevice",
            "PhdNumericObservation",
            "PhdCompoundNumericObservation",
        )
    }


def test_same_bundle_again_creates_nothing(fhir_server: FhirServer) -> None:
    bundle = weight_and_bp_bundle()
    first = fhir_server.post_bundle(bundle)
    counts = {t: len(fhir_server.search(t)) for t in ("Device", "Observation")}

    again = fhir_server.post_bundle(bundle)

    # Conditional create (ifNoneExist on the identifier) found each one: 200, same resources.
    assert statuses(again) == ["200"] * len(bundle["entry"])
    assert [e["response"]["location"] for e in again["entry"]] == [
        e["response"]["location"] for e in first["entry"]
    ]
    assert (
        {t: len(fhir_server.search(t)) for t in counts}
        == counts
        == {
            "Device": 3,
            "Observation": 3,
        }
    )


def _no_status(obs: dict[str, Any]) -> None:
    del obs["status"]


def _weight_in_cm(obs: dict[str, Any]) -> None:
    obs["valueQuantity"].update(unit="cm", code="cm")


def _systolic_in_kpa(obs: dict[str, Any]) -> None:
    obs["component"][0]["valueQuantity"].update(value=Decimal("16.1"), unit="kPa", code="kPa")


@pytest.mark.parametrize(
    ("profile", "spoil", "expression"),
    [
        (BODYWEIGHT, _no_status, "Observation.status"),
        (BODYWEIGHT, _weight_in_cm, "Observation.value[x]:valueQuantity.code"),
        (BP, _systolic_in_kpa, "Observation.component.value[x]"),
    ],
    ids=["no-status", "bodyweight-in-cm", "bp-in-kpa"],
)
def test_invalid_entry_is_refused_alone(
    fhir_server: FhirServer,
    profile: str,
    spoil: Callable[[dict[str, Any]], None],
    expression: str,
) -> None:
    bundle = weight_and_bp_bundle()
    bad = entry_with(bundle, profile)
    spoil(bad["resource"])

    response = fhir_server.post_bundle(bundle)

    index = bundle["entry"].index(bad)
    refused = response["entry"][index]["response"]
    assert refused["status"].split(" ")[0] in {"400", "422"}
    outcome = refused["outcome"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(
        issue["severity"] == "error" and expression in issue.get("expression", [])
        for issue in outcome["issue"]
    ), outcome
    assert by_identifier(fhir_server, bad["resource"]) == []
    # The bundle is processed like a batch: every other entry was created.
    others = [s for i, s in enumerate(statuses(response)) if i != index]
    assert others == ["201"] * (len(bundle["entry"]) - 1)
    assert len(fhir_server.search("Observation")) == 2


def test_entries_referencing_a_refused_entry_are_refused(fhir_server: FhirServer) -> None:
    bundle = weight_and_bp_bundle()
    weight = entry_with(bundle, BODYWEIGHT)
    (scale,) = [
        e for e in bundle["entry"] if e["fullUrl"] == weight["resource"]["device"]["reference"]
    ]
    scale["resource"]["status"] = "switched-on"  # not in the required device-status value set
    bundle["entry"].reverse()  # any order: referenced entries are created first

    response = fhir_server.post_bundle(bundle)

    by_url = dict(zip((e["fullUrl"] for e in bundle["entry"]), statuses(response), strict=True))
    assert by_url.pop(scale["fullUrl"]) == "400"
    assert by_url.pop(weight["fullUrl"]) == "400"  # its device was not created
    assert set(by_url.values()) == {"201"}


def test_bare_observation_create_honours_if_none_exist(fhir_server: FhirServer) -> None:
    weight = entry_with(weight_and_bp_bundle(), BODYWEIGHT)
    resource = copy.deepcopy(weight["resource"])
    del resource["device"], resource["extension"]  # no bundle to resolve them in
    headers = {"If-None-Exist": weight["request"]["ifNoneExist"]}

    created = fhir_server.post("Observation", resource, headers)
    again = fhir_server.post("Observation", resource, headers)

    assert created.status_code == 201
    assert created.headers["Location"].startswith(f"{fhir_server.base_url}/Observation/")
    assert again.status_code == 200
    assert parse_json(again.content)["id"] == parse_json(created.content)["id"]
    assert len(fhir_server.search("Observation")) == 1


# --------------------------------------------------------------------------- faults, auth, TLS


def test_injected_fault_then_success(fhir_server: FhirServer) -> None:
    fhir_server.inject(503, retry_after=1)

    def post() -> httpx.Response:
        return fhir_server.post("/", weight_and_bp_bundle())

    failed = post()
    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == "1"
    assert failed.json()["resourceType"] == "OperationOutcome"
    assert fhir_server.search("Observation") == []

    succeeded = post()
    assert succeeded.status_code == 200
    assert set(statuses(parse_json(succeeded.content))) == {"201"}


def test_bearer_token_and_client_certificate(
    fhir_server_factory: Callable[..., FhirServer],
) -> None:
    server = fhir_server_factory(bearer_token="s3cret-token", require_client_cert=True)
    url = f"{server.base_url}/metadata"

    anonymous = server.ssl_context(client_cert=False)
    with pytest.raises(httpx.TransportError):  # no client certificate: the handshake fails
        httpx.get(url, verify=anonymous, headers={"Authorization": "Bearer s3cret-token"})
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = httpx.get(url, verify=server.ssl_context(), headers=headers)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    allowed = server.http.get("/metadata")  # the helper's client sends the token and the cert
    assert allowed.status_code == 200
    assert allowed.json()["fhirVersion"] == "4.0.1"


def test_tls_needs_the_test_ca(fhir_server: FhirServer) -> None:
    assert fhir_server.base_url.startswith("https://127.0.0.1:")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{fhir_server.base_url}/metadata")  # system trust store only
    trusted = httpx.get(f"{fhir_server.base_url}/metadata", verify=fhir_server.ssl_context())
    assert trusted.json()["resourceType"] == "CapabilityStatement"


def test_restart_keeps_the_port_and_empties_the_store(fhir_server: FhirServer) -> None:
    fhir_server.post_bundle(weight_and_bp_bundle())
    port = fhir_server.port

    fhir_server.restart()

    assert fhir_server.port == port
    assert fhir_server.search("Observation") == []


# --------------------------------------------------------------------------- OAuth2 token endpoint

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SECRET_CLIENT = "secret-client"
SECRET = "s3cret+/with=odd&chars"  # survives Basic both raw and form-encoded
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: PrivateKey) -> dict[str, str]:
    def part(number: int, size: int) -> str:
        return b64url(number.to_bytes(size, "big"))

    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        return {"kty": "RSA", "n": part(numbers.n, key.key_size // 8), "e": part(numbers.e, 3)}
    point = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-384", "x": part(point.x, 48), "y": part(point.y, 48)}


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def signature(alg: str, key: PrivateKey | bytes, data: bytes) -> bytes:
    """The JWS signature of ``data``: RS*/ES* with a private key, HS256 with a byte secret."""
    if alg == "none":
        return b""
    if alg == "HS256":
        assert isinstance(key, bytes)
        return hmac.new(key, data, hashlib.sha256).digest()
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384()}[alg[2:]]
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), digest)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest)))
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")  # JWS wants raw r||s, not DER


def jws(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    def encode(part: dict[str, Any]) -> str:
        return b64url(json.dumps(part, separators=(",", ":")).encode())

    signing_input = f"{encode(header)}.{encode(claims)}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


@dataclass(frozen=True)
class OAuthSetup:
    server: FhirServer
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey

    def key_of(self, client_id: str) -> PrivateKey:
        return self.rsa_key if client_id.startswith("rs-") else self.ec_key

    def assertion(
        self,
        client_id: str,
        *,
        alg: str | None = None,
        key: PrivateKey | bytes | None = None,
        **claims: Any,
    ) -> str:
        """A client assertion for ``client_id``, valid unless told otherwise (a claim given as
        None is left out)."""
        own_key = self.key_of(client_id)
        alg = alg or ("RS384" if isinstance(own_key, rsa.RSAPrivateKey) else "ES384")
        signing_key = own_key if key is None else key
        payload = {
            "iss": client_id,
            "sub": client_id,
            "aud": self.server.token_url,
            "exp": int(time.time()) + 60,
            "jti": uuid.uuid4().hex,
        } | claims
        header = {"alg": alg, "typ": "JWT", "kid": f"{client_id}-key"}
        return jws(
            header,
            {name: value for name, value in payload.items() if value is not None},
            lambda data: signature(alg, signing_key, data),
        )

    def token_request(self, form: dict[str, str], **options: Any) -> httpx.Response:
        """POST the token endpoint with nothing but TLS trust (no default Authorization)."""
        verify = self.server.ssl_context()
        return httpx.post(self.server.token_url, data=form, verify=verify, **options)

    def jwt_grant(self, assertion: str, **more: str) -> httpx.Response:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        }
        return self.token_request(form | more)

    def fhir_get(self, path: str, token: str | None) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        url = f"{self.server.base_url}/{path}"
        return httpx.get(url, headers=headers, verify=self.server.ssl_context())


@pytest.fixture(scope="module")
def oauth_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthSetup]:
    """One OAuth server for the module: a secret client, and RSA / P-384 key clients each
    registered both as a JWK and as a PEM."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    clients: list[dict[str, Any]] = [{"client_id": SECRET_CLIENT, "secret": SECRET}]
    for key, prefix in ((rsa_key, "rs"), (ec_key, "es")):
        clients.append({"client_id": f"{prefix}-jwk", "jwk": public_jwk(key)})
        clients.append({"client_id": f"{prefix}-pem", "public_key_pem": public_pem(key)})
    server = FhirServer(tmp_path_factory.mktemp("fhir-oauth"), oauth_clients=clients)
    with server:
        yield OAuthSetup(server, rsa_key, ec_key)


@pytest.fixture
def oauth(oauth_module: OAuthSetup) -> OAuthSetup:
    """The module's OAuth server, running and reset (no tokens, no faults, counters at 0)."""
    if not oauth_module.server.running:
        oauth_module.server.start()
    oauth_module.server.reset()
    return oauth_module


def granted_token(response: httpx.Response, scope: str = "system/*.write") -> str:
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == scope
    token: str = body["access_token"]
    assert len(token) >= 32
    return token


def assert_refused(response: httpx.Response, status: int, error: str, why: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error
    assert why in body["error_description"]


def assert_fhir_search_works(oauth: OAuthSetup, token: str) -> None:
    found = oauth.fhir_get("Observation?_count=10", token)
    assert found.status_code == 200, found.text
    assert found.json()["type"] == "searchset"


def test_client_secret_grants_open_a_fhir_search(oauth: OAuthSetup) -> None:
    form = {"grant_type": "client_credentials"}
    basic = oauth.token_request(form, auth=(SECRET_CLIENT, SECRET))  # client_secret_basic
    post = oauth.token_request(  # client_secret_post, with a scope
        form
        | {"client_id": SECRET_CLIENT, "client_secret": SECRET, "scope": "system/Observation.write"}
    )

    # RFC 6749 2.3.1 form-encodes id and secret inside Basic; httpx (above) sends them raw.
    encoded = f"{quote_plus(SECRET_CLIENT)}:{quote_plus(SECRET)}".encode()
    headers = {"Authorization": f"Basic {base64.b64encode(encoded).decode()}"}
    rfc_basic = oauth.token_request(form, headers=headers)

    tokens = [
        granted_token(basic),
        granted_token(post, scope="system/Observation.write"),
        granted_token(rfc_basic),
    ]
    assert len(set(tokens)) == 3
    for token in tokens:
        assert_fhir_search_works(oauth, token)
    assert oauth.server.token_stats() == {"granted": 3, "rejected": 0}
    assert oauth.server.request_token(SECRET_CLIENT, SECRET)  # the helper: Basic as well


def test_token_request_errors(oauth: OAuthSetup) -> None:
    form = {"grant_type": "client_credentials"}
    wrong_basic = oauth.token_request(form, auth=(SECRET_CLIENT, "wrong"))
    assert_refused(wrong_basic, 401, "invalid_client", "wrong secret")
    assert wrong_basic.headers["WWW-Authenticate"].startswith("Basic")
    unknown_basic = oauth.token_request(form, auth=("nobody", SECRET))
    assert_refused(unknown_basic, 401, "invalid_client")
    wrong_post = oauth.token_request(form | {"client_id": SECRET_CLIENT, "client_secret": "x"})
    assert_refused(wrong_post, 400, "invalid_client", "wrong client_secret")
    # A key client has no secret to give.
    keyless = oauth.token_request(form | {"client_id": "rs-jwk", "client_secret": SECRET})
    assert_refused(keyless, 400, "invalid_client")
    assert_refused(oauth.token_request(form), 401, "invalid_client", "no client authentication")
    two_methods = oauth.token_request(
        form | {"client_id": SECRET_CLIENT, "client_secret": SECRET}, auth=(SECRET_CLIENT, SECRET)
    )
    assert_refused(two_methods, 400, "invalid_request", "more than one")
    password = {"grant_type": "password", "username": "u", "password": "p"}
    wrong_grant = oauth.token_request(password, auth=(SECRET_CLIENT, SECRET))
    assert_refused(wrong_grant, 400, "unsupported_grant_type")
    no_grant = oauth.token_request({"scope": "system/*.write"}, auth=(SECRET_CLIENT, SECRET))
    assert_refused(no_grant, 400, "invalid_request", "grant_type")
    as_json = httpx.post(
        oauth.server.token_url,
        json=form,
        auth=(SECRET_CLIENT, SECRET),
        verify=oauth.server.ssl_context(),
    )
    assert_refused(as_json, 400, "invalid_request", "x-www-form-urlencoded")
    get = httpx.get(oauth.server.token_url, verify=oauth.server.ssl_context())
    assert_refused(get, 405, "invalid_request")

    assert oauth.server.token_stats() == {"granted": 0, "rejected": 10}


@pytest.mark.parametrize("client_id", ["rs-jwk", "rs-pem", "es-jwk", "es-pem"])
def test_private_key_jwt_grant(oauth: OAuthSetup, client_id: str) -> None:
    response = oauth.jwt_grant(oauth.assertion(client_id), scope="system/*.write")

    assert_fhir_search_works(oauth, granted_token(response))
    # client_id may be sent as well when it names the issuer.
    again = oauth.jwt_grant(oauth.assertion(client_id), client_id=client_id)
    assert_fhir_search_works(oauth, granted_token(again))
    assert oauth.server.token_stats() == {"granted": 2, "rejected": 0}


def _replayed(oauth: OAuthSetup) -> str:
    assertion = oauth.assertion("rs-jwk", jti="once-only")
    granted_token(oauth.jwt_grant(assertion))
    return assertion


def _ecdsa_der_signature(oauth: OAuthSetup) -> str:
    assertion = oauth.assertion("es-jwk")
    signing_input = assertion.rsplit(".", 1)[0].encode()
    der = oauth.ec_key.sign(signing_input, ec.ECDSA(hashes.SHA384()))
    return f"{signing_input.decode()}.{b64url(der)}"


def _alg_confusion(oauth: OAuthSetup) -> str:
    """HS256 keyed with the client's public key (the classic downgrade): refused."""
    return oauth.assertion("rs-pem", alg="HS256", key=public_pem(oauth.rsa_key).encode())


def _unsigned(oauth: OAuthSetup) -> str:
    return oauth.assertion("es-pem", alg="none")


def _rs256(oauth: OAuthSetup) -> str:
    return oauth.assertion("rs-jwk", alg="RS256")


def _wrong_rsa_key(oauth: OAuthSetup) -> str:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return oauth.assertion("rs-jwk", key=other)


def _wrong_ec_key(oauth: OAuthSetup) -> str:
    return oauth.assertion("es-jwk", key=ec.generate_private_key(ec.SECP384R1()))


def _ec_key_for_rsa_client(oauth: OAuthSetup) -> str:
    return oauth.assertion("rs-jwk", alg="ES384", key=oauth.ec_key)


def _claims(**claims: Any) -> Callable[[OAuthSetup], str]:
    return lambda oauth: oauth.assertion("es-jwk", **claims)


def _times(**offsets: int) -> Callable[[OAuthSetup], str]:
    """Time claims (exp, nbf) this many seconds from now, taken when the test runs."""

    def make(oauth: OAuthSetup) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {name: now + delta for name, delta in offsets.items()}
        return oauth.assertion("es-jwk", **claims)

    return make


def _aud_of(make: Callable[[FhirServer], str]) -> Callable[[OAuthSetup], str]:
    return lambda oauth: oauth.assertion("rs-pem", aud=make(oauth.server))


BAD_ASSERTIONS: dict[str, tuple[Callable[[OAuthSetup], str], str]] = {
    "replayed-jti": (_replayed, "already used"),
    "aud-localhost": (_aud_of(lambda s: f"https://localhost:{s.port}/token"), "aud must be"),
    "aud-base-url": (_aud_of(lambda s: s.base_url), "aud must be"),
    "aud-trailing-slash": (_aud_of(lambda s: s.token_url + "/"), "aud must be"),
    "no-aud": (_claims(aud=None), "aud must be"),
    "expired": (_times(exp=-1), "expired"),
    "exp-too-far-ahead": (_times(exp=301 + 5), "5 minutes"),
    "no-exp": (_claims(exp=None), "exp is missing"),
    "not-yet-valid": (_times(nbf=30), "nbf"),
    "no-jti": (_claims(jti=None), "jti is missing"),
    "sub-not-iss": (_claims(sub="someone-else"), "iss and sub"),
    "unknown-client": (_claims(iss="nobody", sub="nobody"), "no public key"),
    "wrong-rsa-key": (_wrong_rsa_key, "signature"),
    "wrong-ec-key": (_wrong_ec_key, "signature"),
    "ec-key-for-rsa-client": (_ec_key_for_rsa_client, "RS384"),
    "ecdsa-der-signature": (_ecdsa_der_signature, "signature"),
    "alg-hs256": (_alg_confusion, "RS384 or ES384 only"),
    "alg-none": (_unsigned, "RS384 or ES384 only"),
    "alg-rs256": (_rs256, "RS384 or ES384 only"),
}


@pytest.mark.parametrize("case", list(BAD_ASSERTIONS))
def test_bad_assertions_are_refused(oauth: OAuthSetup, case: str) -> None:
    make, why = BAD_ASSERTIONS[case]
    granted_before = 1 if case == "replayed-jti" else 0

    response = oauth.jwt_grant(make(oauth))

    assert_refused(response, 400, "invalid_client", why)
    assert oauth.server.token_stats() == {"granted": granted_before, "rejected": 1}


def test_wrong_assertion_type_and_client_id_are_refused(oauth: OAuthSetup) -> None:
    assertion = oauth.assertion("rs-jwk")
    wrong_type = oauth.jwt_grant(assertion, client_assertion_type="urn:example:saml")
    assert_refused(wrong_type, 400, "invalid_client", "client_assertion_type")
    other_id = oauth.jwt_grant(assertion, client_id="es-jwk")
    assert_refused(other_id, 400, "invalid_client", "client_id differs")
    garbage = oauth.jwt_grant("not.a.jwt!")
    assert_refused(garbage, 400, "invalid_client", "compact JWS")
    # None of these used up the jti: the same assertion still works.
    granted_token(oauth.jwt_grant(assertion))


def test_fhir_endpoints_need_an_issued_token(oauth: OAuthSetup) -> None:
    headers_tried: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer made-up-token"},
        {"Authorization": f"Basic {b64url(f'{SECRET_CLIENT}:{SECRET}'.encode())}"},
    ]
    for path in ("metadata", "Observation"):
        for headers in headers_tried:
            refused = httpx.get(
                f"{oauth.server.base_url}/{path}",
                headers=headers,
                verify=oauth.server.ssl_context(),
            )
            assert refused.status_code == 401
            assert refused.headers["WWW-Authenticate"] == "Bearer"
    token = oauth.server.request_token(SECRET_CLIENT, SECRET)
    assert oauth.fhir_get("metadata", token).json()["fhirVersion"] == "4.0.1"
    # The helpers' test control needs no token.
    assert oauth.server.token_stats() == {"granted": 1, "rejected": 0}


def test_expired_tokens_get_401_and_a_new_token_works(oauth: OAuthSetup) -> None:
    old = granted_token(oauth.jwt_grant(oauth.assertion("es-pem")))
    assert_fhir_search_works(oauth, old)

    assert oauth.server.expire_tokens() == 1

    refused = oauth.fhir_get("Observation", old)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    new = granted_token(oauth.jwt_grant(oauth.assertion("es-pem")))  # the client's refresh
    assert new != old
    assert_fhir_search_works(oauth, new)
    assert oauth.fhir_get("Observation", old).status_code == 401
    assert oauth.server.token_stats() == {"granted": 2, "rejected": 0}


def test_faults_target_the_token_endpoint_or_fhir_paths(oauth: OAuthSetup) -> None:
    server = oauth.server
    form = {"grant_type": "client_credentials"}

    def token_request() -> httpx.Response:
        return oauth.token_request(form, auth=(SECRET_CLIENT, SECRET))

    token = granted_token(token_request())

    server.inject(503, retry_after=2, path="/token")
    assert_fhir_search_works(oauth, token)  # FHIR requests are not affected
    failed = token_request()
    assert_refused(failed, 503, "temporarily_unavailable", "Injected fault 503")
    assert failed.headers["Retry-After"] == "2"
    granted_token(token_request())  # count=1: used up

    server.inject(400, path="/token", error="invalid_grant")
    assert_refused(token_request(), 400, "invalid_grant")

    server.inject(503, count=2)  # default: every FHIR path, never /token
    granted_token(token_request())
    assert oauth.fhir_get("metadata", token).status_code == 503
    assert oauth.fhir_get("Device", token).status_code == 503
    assert oauth.fhir_get("Device", token).status_code == 200

    server.inject(429, path="/Observation")
    assert oauth.fhir_get("Device", token).status_code == 200
    granted_token(token_request())
    assert oauth.fhir_get("Observation?_count=1", token).status_code == 429
    assert_fhir_search_works(oauth, token)

    server.inject(503, count=5, path="/token")
    server.inject(503, count=0, path="/token")  # count 0 clears it
    granted_token(token_request())
    bad = server.http.post("/$test/faults", json={"status": 503, "path": "token"})
    assert bad.status_code == 400
    # Injected faults are not token decisions.
    assert server.token_stats() == {"granted": 5, "rejected": 0}


def test_token_ttl_alongside_a_static_bearer_token(
    fhir_server_factory: Callable[..., FhirServer],
) -> None:
    server = fhir_server_factory(
        bearer_token="static-token",
        oauth_clients=[{"client_id": SECRET_CLIENT, "secret": SECRET}],
        oauth_token_ttl=1,
    )
    response = httpx.post(
        server.token_url,
        data={"grant_type": "client_credentials"},
        auth=(SECRET_CLIENT, SECRET),  # the token endpoint needs no bearer token
        verify=server.ssl_context(),
    )
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == 1
    issued = response.json()["access_token"]

    def status(token: str | None, path: str = "Observation") -> int:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        url = f"{server.base_url}/{path}"
        return httpx.get(url, headers=headers, verify=server.ssl_context()).status_code

    assert status(issued) == status("static-token") == 200
    assert status(None) == 401
    assert status(None, "$test/token-requests") == 401  # control: BEARER_TOKEN applies
    time.sleep(1.2)
    assert status(issued) == 401  # expired by itself
    assert status("static-token") == 200
    assert server.token_stats() == {"granted": 1, "rejected": 0}  # the helper sends the static one


def test_bad_oauth_clients_stop_the_server(tmp_path: Any) -> None:
    server = FhirServer(
        tmp_path, tls=False, oauth_clients=[{"client_id": "x", "jwk": {"kty": "oct"}}]
    )
    with pytest.raises(fhir_support.FhirServerError, match="unusable public key"):
        server.start()
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    server = FhirServer(
        tmp_path, tls=False, oauth_clients=[{"client_id": "x", "jwk": public_jwk(small)}]
    )
    with pytest.raises(fhir_support.FhirServerError, match="2048 bits"):
        server.start()
