"""OAuth2 client credentials for a FHIR server: a client secret, or SMART Backend Services'
``private_key_jwt`` (a short-lived JWT signed with RS384 or ES384, unique ``jti``).

The token is cached until shortly before it expires; the FHIR uplink asks for a fresh one once
after a 401. Concurrent callers share one token request. Secrets and tokens never reach logs.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.uplinks.base import UplinkError

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60  # seconds; SMART allows at most 5 minutes
EXPIRY_MARGIN = 30.0  # renew this long before the server says the token expires


class OAuthError(UplinkError):
    """The token endpoint refused or could not be reached; the message names why (no secret)."""


def load_private_key(path: Path) -> tuple[Any, str]:
    """A PEM private key and the JWS algorithm it signs with: RSA -> RS384, P-384 -> ES384."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise OAuthError(f"cannot read the private key {path}: {type(exc).__name__}") from exc
    if isinstance(key, rsa.RSAPrivateKey):
        return key, "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return key, "ES384"
    raise OAuthError(f"{path}: SMART Backend Services needs an RSA or a P-384 key")


class OAuthClient:
    def __init__(
        self,
        token_url: str,
        client_id: str,
        *,
        secret: str | None = None,
        private_key: Path | None = None,
        key_id: str | None = None,
        scope: str | None = None,
        verify: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (secret is None) == (private_key is None):
            raise OAuthError("give exactly one of a client secret or a private key")
        self.token_url = token_url
        self.client_id = client_id
        self.secret = secret
        self.key_id = key_id
        self.scope = scope
        self.clock = clock
        self._key: Any = None
        self._algorithm = ""
        if private_key is not None:
            self._key, self._algorithm = load_private_key(private_key)
        context = verify or ssl.create_default_context()
        self._http = httpx.AsyncClient(verify=context, timeout=timeout)
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self.grants = 0  # tokens obtained, for diagnostics and tests

    async def close(self) -> None:
        await self._http.aclose()

    async def token(self, refresh: bool = False) -> str:
        """A valid access token; ``refresh`` drops the cached one (the server said 401)."""
        async with self._lock:
            if refresh:
                self._token = None
            if self._token is None or self.clock() >= self._expires - EXPIRY_MARGIN:
                self._token, self._expires = await self._request()
                self.grants += 1
            return self._token

    def assertion(self) -> str:
        """The signed client assertion (``private_key_jwt``): short-lived, with a unique jti."""
        now = int(self.clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": now + ASSERTION_LIFETIME,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        headers = {"typ": "JWT", **({"kid": self.key_id} if self.key_id else {})}
        return jwt.encode(claims, self._key, algorithm=self._algorithm, headers=headers)

    async def _request(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        auth: httpx.Auth | httpx._client.UseClientDefault = httpx.USE_CLIENT_DEFAULT
        if self.secret is not None:  # client_secret_basic
            auth = httpx.BasicAuth(self.client_id, self.secret)
        else:
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = self.assertion()
        try:
            response = await self._http.post(self.token_url, data=form, auth=auth)
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            raise OAuthError(f"token endpoint unreachable: {type(exc).__name__}") from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body.get("access_token"), str):
            error = body.get("error", "no access token") if isinstance(body, dict) else "?"
            raise OAuthError(f"token endpoint answered {response.status_code}: {error}")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 300.0
        log.debug("got an access token for %s, valid %.0f s", self.client_id, lifetime)
        return body["access_token"], self.clock() + lifetime
