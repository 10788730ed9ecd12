"""Who may deliver a callback: the sender's address, then a shared secret or an advanced-auth token.

Airflow does not authenticate plugin routes, so the receiver checks everything itself from the
request head, before reading a byte of the body. Secrets are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from airflow_provider_kaleyra.callbacks.tokens import TokenAuthority

SECRET_HEADER = "x-kaleyra-secret"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _presented(secret_header: str | None, authorization: str | None) -> tuple[list[str], str | None]:
    """(secrets offered: ``X-Kaleyra-Secret``, Bearer value or Basic password; the Bearer value)."""
    offered = []
    if secret_header and secret_header.strip():
        offered.append(secret_header.strip())
    scheme, _, value = (authorization or "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        offered.append(value)
        return offered, value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return offered, None
        offered.append(decoded.partition(":")[2])
    return offered, None


def is_authorized(
    headers: Mapping[str, str], secret: str | None, tokens: TokenAuthority | None = None
) -> bool:
    """The shared secret (constant time, every offer compared) or a valid token of this connection."""
    offered, bearer = _presented(headers.get(SECRET_HEADER), headers.get("authorization"))
    ok = False
    if secret:
        expected = secret.encode()
        for candidate in offered:
            ok |= hmac.compare_digest(candidate.encode(), expected)
    if not ok and tokens is not None and bearer is not None:
        ok = tokens.verify(bearer)
    return ok


def parse_networks(value: str | Iterable[str] | None, setting: str) -> tuple[Network, ...]:
    """CIDRs (or addresses) from a comma-separated string or a list; a bad one is an error naming it."""
    if value in (None, ""):
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    networks = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{setting}: {text!r} is not an IP address or CIDR") from None
    return tuple(networks)


@lru_cache(maxsize=1024)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _within(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, networks: Iterable[Network]
) -> bool:
    return address is not None and any(address in network for network in networks)


@dataclass(frozen=True)
class AllowList:
    """Senders allowed (Kaleyra's addresses, given on request) and proxies whose ``X-Forwarded-For`` counts."""

    allowed: tuple[Network, ...]
    proxies: tuple[Network, ...] = field(default=())

    def admits(self, peer: str | None, forwarded_for: str | None) -> bool:
        """The sender is the peer, or, behind trusted proxies, the last hop that is not one of them."""
        sender = _address(peer or "")
        if forwarded_for and _within(sender, self.proxies):
            for hop in reversed(forwarded_for.split(",")):
                sender = _address(hop)
                if not _within(sender, self.proxies):
                    break
        return _within(sender, self.allowed)
