"""What the receiver needs, from its arguments or the ``kaleyra`` connection, read on the first
request (the API server imports plugins before a connection or a database may exist). Without a
secret, client credentials or a store it refuses everything (503), and looks again after a while.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_kaleyra.callbacks.auth import AllowList, TokenAuthority, parse_networks
from airflow_provider_kaleyra.callbacks.parsing import FieldMapping
from airflow_provider_kaleyra.callbacks.store import CallbackStore, GroupCommit, get_store
from airflow_provider_kaleyra.client.config import DEFAULT_CONN_ID, DEFAULT_TOKEN_LIFETIME, KaleyraConfig
from airflow_provider_kaleyra.utils.database import redact_url

log = logging.getLogger(__name__)

CONN_ID_ENV = "KALEYRA_CALLBACK_CONN_ID"
_RETRY_CONFIG_AFTER = 15.0  # seconds between connection look-ups while misconfigured


class ReceiverNotConfigured(Exception):
    """No secret or no store: the receiver refuses everything rather than accept unauthenticated data."""


def connection_id(conn_id: str | None) -> str:
    """The connection named, else env ``KALEYRA_CALLBACK_CONN_ID``, else ``kaleyra_default``."""
    return conn_id or os.environ.get(CONN_ID_ENV) or DEFAULT_CONN_ID


def read_connection(conn_id: str | None) -> KaleyraConfig:
    """Through the hook, like every other component: one reading, secrets masked."""
    conn_id = connection_id(conn_id)
    try:
        from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook

        return KaleyraHook(kaleyra_conn_id=conn_id).config
    except Exception as exc:
        raise ReceiverNotConfigured(
            f"cannot read connection {conn_id!r}: {type(exc).__name__}: {exc}"
        ) from None


@dataclass(frozen=True)
class ReceiverSettings:
    """What a request needs: where to store, who may send, how to read payloads."""

    store: CallbackStore
    secret: str | None = field(repr=False)
    tokens: TokenAuthority | None
    allow: AllowList | None
    mapping: FieldMapping
    region: str | None
    intake: GroupCommit


class LazySettings:
    """Built on the first request, then kept in ``resolved``; a failure is retried after a while. From
    ``create_app``'s arguments, else the connection's extras ``callback_<argument>`` (the connection is
    not read when a store and a secret are given; tokens are bound to its id)."""

    def __init__(self, conn_id: str | None, store: CallbackStore | None, **given: Any) -> None:
        self.conn_id, self.store, self.given = conn_id, store, given
        self.resolved: ReceiverSettings | None = None
        self._failure, self._failed_at = "", 0.0
        self._lock = threading.Lock()

    def get(self) -> ReceiverSettings:
        with self._lock:
            if self.resolved is None:
                if self._failure and time.monotonic() - self._failed_at < _RETRY_CONFIG_AFTER:
                    raise ReceiverNotConfigured(self._failure)
                try:
                    self.resolved = self._build()
                except ReceiverNotConfigured as exc:
                    self._failure, self._failed_at = str(exc), time.monotonic()
                    log.error("Kaleyra callback receiver is not configured: %s", exc)
                    raise
            return self.resolved

    def _build(self) -> ReceiverSettings:
        """A missing or unusable piece is :class:`ReceiverNotConfigured`."""
        conn_id, store, given = connection_id(self.conn_id), self.store, self.given
        complete = store is not None and bool(given["secret"] or given["client_secret"])
        config = None if complete else read_connection(conn_id)

        def pick(name: str, default: Any = None) -> Any:
            value = given.get(name)
            return getattr(config, f"callback_{name}", default) if value is None else value

        secret, client_id, client_secret = pick("secret"), pick("client_id"), pick("client_secret")
        if not secret and not client_secret:
            raise ReceiverNotConfigured(
                f"connection {conn_id!r} has neither a callback_secret nor a callback_client_secret extra"
            )
        try:
            tokens, lifetime = None, pick("token_lifetime", DEFAULT_TOKEN_LIFETIME)
            if client_id or client_secret:
                tokens = TokenAuthority(
                    client_id or "", client_secret or "", binding=conn_id, lifetime=lifetime
                )
            allowed = parse_networks(pick("allowed_ips", ()), "callback_allowed_ips")
            proxies = parse_networks(pick("trusted_proxies", ()), "callback_trusted_proxies")
            if proxies and not allowed:
                raise ValueError("callback_trusted_proxies without an allow-list")
            mapping = FieldMapping.from_dict(pick("field_map"))
            store = store or get_store(config.store_url)  # type: ignore[union-attr]
        except (ValueError, TypeError) as exc:
            raise ReceiverNotConfigured(f"connection {conn_id!r}: {exc}") from None
        log.info("Kaleyra callbacks go to %s", redact_url(store.url))
        return ReceiverSettings(
            store=store,
            secret=secret or None,
            tokens=tokens,
            allow=AllowList(allowed, proxies) if allowed else None,
            mapping=mapping,
            region=getattr(config, "default_region", None),
            intake=GroupCommit(store),
        )
