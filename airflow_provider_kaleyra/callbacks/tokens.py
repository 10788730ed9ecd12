"""Advanced authentication of a Kaleyra callback profile: client credentials in, a Bearer token out.

Kaleyra's console first calls the customer's authentication URL with a client ID and secret, expects
``{"token_type": "Bearer", "access_token": ..., "expires_in": "3599", ...}``, then sends each callback
with ``Authorization: Bearer <token>`` until it expires. Tokens here are stateless JWTs (HS256) whose
key is derived from the client secret and the connection's id: every process and host reading the
same connection verifies them, nothing is shared, and another connection's token fails. A verified
token is remembered by its digest until it expires, so a callback costs a hash, not a JWT decode.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from datetime import timedelta
from urllib.parse import parse_qsl

import jwt

from airflow_provider_kaleyra.callbacks.bodies import loose_key, media_type
from airflow_provider_kaleyra.client.config import DEFAULT_TOKEN_LIFETIME

_CACHE_SIZE = 4096  # verified tokens remembered; Kaleyra reuses one token for its whole lifetime
_ALGORITHM = "HS256"


class TokenAuthority:
    """Issues and verifies the callback tokens of one connection (never shows a secret or a token)."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        binding: str,
        lifetime: timedelta = DEFAULT_TOKEN_LIFETIME,
    ) -> None:
        if not client_id or not client_secret:
            raise ValueError("advanced callback auth needs both a client ID and a client secret")
        self.lifetime = int(lifetime.total_seconds())
        if self.lifetime < 1:
            raise ValueError(f"callback token lifetime must be at least one second, got {lifetime}")
        self.audience = f"kaleyra-callbacks:{binding}"
        self._client_id = client_id.encode()
        self._client_secret = client_secret.encode()
        self._key = hmac.new(self._client_secret, self.audience.encode(), hashlib.sha256).digest()
        self._verified: dict[bytes, float] = {}

    def __repr__(self) -> str:
        return f"TokenAuthority(audience={self.audience!r}, lifetime={self.lifetime}s)"

    def client_matches(self, client_id: str, client_secret: str) -> bool:
        """Both compared in constant time, whichever is wrong."""
        same_id = hmac.compare_digest(client_id.encode(), self._client_id)
        same_secret = hmac.compare_digest(client_secret.encode(), self._client_secret)
        return same_id & same_secret

    def issue(self) -> dict[str, str]:
        """A new token in the shape Kaleyra expects (numbers as strings, as its documentation shows)."""
        now = int(time.time())
        expires = now + self.lifetime
        claims = {
            "aud": self.audience,
            "sub": self._client_id.decode(),
            "iat": now,
            "nbf": now,
            "exp": expires,
            "jti": secrets.token_hex(8),
        }
        left = str(max(1, self.lifetime - 1))  # what Kaleyra's own example shows for an hour: "3599"
        return {
            "token_type": "Bearer",
            "expires_in": left,
            "ext_expires_in": left,
            "expires_on": str(expires),
            "not_before": str(now),
            "resource": self.audience,
            "access_token": jwt.encode(claims, self._key, algorithm=_ALGORITHM),
        }

    def verify(self, token: str) -> bool:
        """Signed by this connection and not expired; cached by digest (never by the token itself)."""
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        expires = self._verified.get(digest)
        if expires is not None:
            if time.time() < expires:
                return True
            del self._verified[digest]
            return False
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[_ALGORITHM],
                audience=self.audience,
                options={"require": ["exp", "iat", "aud"]},
            )
        except jwt.PyJWTError:
            return False
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.clear()
        self._verified[digest] = float(claims["exp"])
        return True


_ID_KEYS = ("clientid", "client", "username", "user")
_SECRET_KEYS = ("clientsecret", "secret", "password")


def _pick(fields: Mapping[str, object], names: tuple[str, ...]) -> str | None:
    loose = {loose_key(k): v for k, v in fields.items() if isinstance(k, str)}
    for name in names:
        value = loose.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def presented_client(
    authorization: str | None, body: bytes, content_type: str | None, query: str
) -> tuple[str, str] | None:
    """The client ID and secret of a token request: Basic auth, a JSON object, a form, or the query."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() == "basic" and value.strip():
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None
    fields: dict[str, object] = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    text = body.strip().decode("utf-8-sig", "replace")
    if text.startswith("{") or media_type(content_type).endswith("json"):
        try:
            decoded = json.loads(text)
        except ValueError:
            return None
        if isinstance(decoded, dict):
            fields.update(decoded)
    elif text:
        fields.update(parse_qsl(text, keep_blank_values=True))
    client_id, client_secret = _pick(fields, _ID_KEYS), _pick(fields, _SECRET_KEYS)
    return (client_id, client_secret) if client_id and client_secret else None
