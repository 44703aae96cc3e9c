"""OAuth2 client credentials for the FHIR uplink: client assertions as SMART Backend Services
wants them, and the whole exchange against the test server's real token endpoint."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.uplinks.base import OutcomeStatus
from gateway.uplinks.fhir import FhirUplink
from gateway.uplinks.oauth import ASSERTION_LIFETIME, OAuthClient, OAuthError
from tests.support.fhir_server import FhirServer
from tests.uplinks.test_fhir_uplink import _envelope

TOKEN_URL = "https://fhir.example.org/token"


def _write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.mark.parametrize(
    ("make_key", "algorithm"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS384"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
    ],
)
async def test_the_client_assertion_is_short_lived_unique_and_signed(
    tmp_path: Path, make_key: Callable[[], object], algorithm: str
) -> None:
    key = make_key()
    path = _write_key(tmp_path / "key.pem", key)  # type: ignore[arg-type]
    client = OAuthClient(TOKEN_URL, "edge-gw", private_key=path, key_id="k1", clock=lambda: 1e9)
    try:
        first, second = client.assertion(), client.assertion()
    finally:
        await client.close()
    header = jwt.get_unverified_header(first)
    assert header["alg"] == algorithm and header["kid"] == "k1"
    claims = jwt.decode(
        first,
        key.public_key(),  # type: ignore[attr-defined]
        algorithms=[algorithm],
        audience=TOKEN_URL,
        options={"verify_exp": False},
    )
    assert claims["iss"] == claims["sub"] == "edge-gw"
    assert claims["exp"] - claims["iat"] == ASSERTION_LIFETIME <= 300
    assert claims["jti"] != jwt.decode(second, options={"verify_signature": False})["jti"]


def test_keys_smart_cannot_use_are_refused(tmp_path: Path) -> None:
    p256 = _write_key(tmp_path / "p256.pem", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(OAuthError, match="P-384"):
        OAuthClient(TOKEN_URL, "edge-gw", private_key=p256)
    with pytest.raises(OAuthError, match="exactly one"):
        OAuthClient(TOKEN_URL, "edge-gw")


def test_the_config_wants_one_credential_and_https(tmp_path: Path) -> None:
    base = {
        "link": {"emulate": ["generic-wss"]},
        "destinations": [
            {
                "type": "fhir",
                "name": "server",
                "base_url": "https://fhir.example.org",
                "oauth": {"token_url": TOKEN_URL, "client_id": "edge-gw"},
            }
        ],
    }
    with pytest.raises(ConfigError, match="exactly one of client_secret_file"):
        parse_config(base)
    base["destinations"][0]["oauth"]["client_secret_file"] = str(tmp_path / "s")  # type: ignore[index]
    base["destinations"][0]["oauth"]["token_url"] = "http://x/token"  # type: ignore[index]
    with pytest.raises(ConfigError, match="token_url must be https"):
        parse_config(base)


def _public_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def _send_one(uplink):  # type: ignore[no-untyped-def]

    (outcome,) = await uplink.send([_envelope(1, 0)])
    return outcome


@pytest.mark.parametrize("credential", ["secret", "private_key_jwt"])
async def test_the_uplink_gets_a_token_keeps_it_and_refreshes_it_after_a_401(
    tmp_path: Path, fhir_server_factory, credential: str
) -> None:

    key = ec.generate_private_key(ec.SECP384R1())
    client: dict[str, str] = {"client_id": "edge-gw"}
    if credential == "secret":
        client["secret"] = "s3cret-for-tests"
    else:
        client["public_key_pem"] = _public_pem(key)
    server: FhirServer = fhir_server_factory(oauth_clients=[client], bearer_token="admin")
    verify = ssl.create_default_context(cafile=server.ca_file)
    oauth = OAuthClient(
        server.token_url,
        "edge-gw",
        secret=client.get("secret"),
        private_key=_write_key(tmp_path / "k.pem", key) if credential != "secret" else None,
        verify=verify,
    )
    uplink = FhirUplink("fhir", server.base_url, ca_file=Path(str(server.ca_file)), oauth=oauth)
    await uplink.start()
    try:
        assert (await _send_one(uplink)).status is OutcomeStatus.DELIVERED
        assert (await _send_one(uplink)).status is OutcomeStatus.DELIVERED
        assert oauth.grants == 1  # cached, not one token a request
        server.expire_tokens()  # the server forgets it early: a 401, then one refresh
        assert (await _send_one(uplink)).status is OutcomeStatus.DELIVERED
        assert oauth.grants == 2
        assert server.token_stats() == {"granted": 2, "rejected": 0}
    finally:
        await uplink.close()
    assert len(server.search("Observation", code="29463-7")) == 1  # conditional creates


async def test_a_token_endpoint_in_trouble_means_retry_later(tmp_path: Path, fhir_server_factory):

    server = fhir_server_factory(
        oauth_clients=[{"client_id": "edge-gw", "secret": "s"}], bearer_token="admin"
    )
    verify = ssl.create_default_context(cafile=server.ca_file)
    oauth = OAuthClient(server.token_url, "edge-gw", secret="wrong", verify=verify)
    uplink = FhirUplink("fhir", server.base_url, ca_file=Path(str(server.ca_file)), oauth=oauth)
    await uplink.start()
    try:
        outcome = await _send_one(uplink)
    finally:
        await uplink.close()
    assert outcome.status is OutcomeStatus.RETRY and "no access token" in outcome.reason
    assert "wrong" not in outcome.reason  # the secret never appears
    assert server.search("Observation") == []
