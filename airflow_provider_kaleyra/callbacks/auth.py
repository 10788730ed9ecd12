"""Who may deliver a callback: the sender's address, then a shared secret (compared in constant time)
or an advanced-auth token, a stateless JWT keyed by the client secret and the connection's id: every
process and host with the connection verifies it with nothing shared; another connection's fails."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

import jwt

from airflow_provider_kaleyra.callbacks.bodies import RawCallback, decode_payload, loose_key
from airflow_provider_kaleyra.client.config import DEFAULT_TOKEN_LIFETIME

SECRET_HEADER = "x-kaleyra-secret"
_REQUIRED = {"require": ["exp", "iat", "aud"]}  # claims a token must carry

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _credentials(authorization: str | None) -> tuple[str, str]:
    """(scheme in lower case, value) of an ``Authorization`` header."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    return scheme.lower(), value.strip()


def _basic(value: str) -> tuple[str, str] | None:
    """(user, password) of a Basic credential, ``None`` when it does not decode to ``user:password``."""
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except ValueError:  # not base64, or not UTF-8
        return None
    return (user, password) if sep else None


def is_authorized(headers: Mapping[str, str], secret: str | None, tokens: TokenAuthority | None) -> bool:
    """The shared secret (``X-Kaleyra-Secret``, a Bearer value or the Basic password; constant time,
    every offer compared) or a valid token of this connection."""
    scheme, value = _credentials(headers.get("authorization"))
    offered = [headers.get(SECRET_HEADER, "").strip()]
    if scheme == "bearer":
        offered.append(value)
    elif scheme == "basic" and (user_password := _basic(value)):
        offered.append(user_password[1])
    expected = (secret or "").encode()
    matches = [hmac.compare_digest(c.encode(), expected) for c in offered if c]  # every offer compared
    ok = bool(expected) and any(matches)
    return ok or (tokens is not None and scheme == "bearer" and bool(value) and tokens.verify(value))


class TokenAuthority:
    """Issues and verifies the callback tokens of one connection (never shows a secret or a token). A
    verified token is remembered by its digest until it expires: a hash, not a JWT decode, a callback."""

    def __init__(
        self,
        client_id: str | None,
        client_secret: str | None,
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
        return same_id & hmac.compare_digest(client_secret.encode(), self._client_secret)

    def issue(self) -> dict[str, str]:
        """A new token in the shape Kaleyra expects (numbers as strings, as its documentation shows)."""
        now = int(time.time())
        expires = now + self.lifetime
        claims = {"aud": self.audience, "sub": self._client_id.decode(), "iat": now, "nbf": now}
        token = jwt.encode({**claims, "exp": expires, "jti": secrets.token_hex(8)}, self._key, "HS256")
        left = str(max(1, self.lifetime - 1))  # what Kaleyra's own example shows for an hour: "3599"
        return {
            "token_type": "Bearer",
            "expires_in": left,
            "ext_expires_in": left,
            "expires_on": str(expires),
            "not_before": str(now),
            "resource": self.audience,
            "access_token": token,
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
            claims = jwt.decode(token, self._key, ["HS256"], options=_REQUIRED, audience=self.audience)
        except jwt.PyJWTError:
            return False
        if len(self._verified) >= 4096:  # bounded: start afresh
            self._verified.clear()
        self._verified[digest] = float(claims["exp"])
        return True


def _pick(fields: Mapping[str, object], names: tuple[str, ...]) -> str | None:
    loose = {loose_key(k): v for k, v in fields.items() if isinstance(k, str)}
    return next((v for name in names if isinstance(v := loose.get(name), str) and v), None)


def presented_client(headers: Mapping[str, str], body: bytes, query: str) -> tuple[str, str] | None:
    """The client ID and secret of a token request: Basic auth, a JSON object, a form, or the query."""
    scheme, value = _credentials(headers.get("authorization"))
    if scheme == "basic" and value:
        return _basic(value)
    raw = RawCallback("POST", body, headers.get("content-type"), query)
    try:  # read as a callback's body is
        payload, fields = decode_payload(raw, ("",) * 3)
    except ValueError:
        return None
    if isinstance(payload, dict):
        fields = {**fields, **payload}
    client_id = _pick(fields, ("clientid", "client", "username", "user"))
    client_secret = _pick(fields, ("clientsecret", "secret", "password"))
    return (client_id, client_secret) if client_id and client_secret else None


def parse_networks(items: Iterable[str], setting: str) -> tuple[Network, ...]:
    """CIDRs (or addresses); a bad one is an error naming it."""
    networks = []
    for text in filter(None, (str(item).strip() for item in items)):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{setting}: {text!r} is not an IP address or CIDR") from None
    return tuple(networks)


@lru_cache(maxsize=1024)
def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _within(address: Address | None, networks: Iterable[Network]) -> bool:
    return address is not None and any(address in network for network in networks)


@dataclass(frozen=True)
class AllowList:
    """Senders allowed (Kaleyra's addresses, on request) and proxies whose ``X-Forwarded-For`` counts."""

    allowed: tuple[Network, ...]
    proxies: tuple[Network, ...] = ()

    def admits(self, peer: str | None, forwarded_for: str | None) -> bool:
        """The sender is the peer, or, behind trusted proxies, the last hop that is not one of them."""
        sender = _address(peer or "")
        for hop in reversed(forwarded_for.split(",") if forwarded_for else []):
            if not _within(sender, self.proxies):
                break
            sender = _address(hop)
        return _within(sender, self.allowed)
