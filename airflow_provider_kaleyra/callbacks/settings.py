"""What the receiver needs, from its arguments or the ``kaleyra`` connection, read on the first request.

Not at import: the API server imports plugins early, and a connection or a database may not be
there yet. A receiver without a secret, client credentials or a store refuses everything (503)
rather than accept unauthenticated data, and looks again after a while.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from airflow_provider_kaleyra.callbacks.auth import AllowList, parse_networks
from airflow_provider_kaleyra.callbacks.intake import GroupCommit
from airflow_provider_kaleyra.callbacks.parsing import FieldMapping
from airflow_provider_kaleyra.callbacks.store import CallbackStore, get_store
from airflow_provider_kaleyra.callbacks.tokens import TokenAuthority
from airflow_provider_kaleyra.client.config import DEFAULT_CONN_ID, DEFAULT_TOKEN_LIFETIME
from airflow_provider_kaleyra.utils.database import redact_url

log = logging.getLogger(__name__)

CONN_ID_ENV = "KALEYRA_CALLBACK_CONN_ID"
_RETRY_CONFIG_AFTER = 15.0  # seconds between connection look-ups while misconfigured


class ReceiverNotConfigured(Exception):
    """No secret or no store: the receiver refuses everything rather than accept unauthenticated data."""


@dataclass(frozen=True)
class ReceiverOptions:
    """What ``create_app`` was given; anything left ``None`` comes from the connection."""

    store: CallbackStore | None = None
    secret: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    token_lifetime: timedelta | None = None
    allowed_ips: tuple[str, ...] | None = None
    trusted_proxies: tuple[str, ...] | None = None
    mapping: FieldMapping | None = None
    region: str | None = None
    conn_id: str | None = None

    @property
    def complete(self) -> bool:
        """Enough to serve without reading a connection (tests, the CLI with ``--store-url``)."""
        return self.store is not None and bool(self.secret or self.client_secret)


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


def _read_connection(conn_id: str) -> Any:
    """Through the hook, like every other component: one reading, secrets masked."""
    try:
        from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook

        return KaleyraHook(kaleyra_conn_id=conn_id).config
    except Exception as exc:
        raise ReceiverNotConfigured(
            f"cannot read connection {conn_id!r}: {type(exc).__name__}: {exc}"
        ) from None


def build_settings(options: ReceiverOptions) -> ReceiverSettings:
    """Options first, then the connection; a missing or unusable piece is :class:`ReceiverNotConfigured`."""
    conn_id = options.conn_id or os.environ.get(CONN_ID_ENV) or DEFAULT_CONN_ID
    config = None if options.complete else _read_connection(conn_id)

    def pick(given: Any, name: str, default: Any = None) -> Any:
        return given if given is not None else getattr(config, name, default) if config else default

    secret = pick(options.secret, "callback_secret")
    client_id = pick(options.client_id, "callback_client_id")
    client_secret = pick(options.client_secret, "callback_client_secret")
    if not secret and not client_secret:
        raise ReceiverNotConfigured(
            f"connection {conn_id!r} has neither a callback_secret nor a callback_client_secret extra"
        )
    try:
        tokens = None
        if client_id or client_secret:
            lifetime = pick(options.token_lifetime, "callback_token_lifetime", DEFAULT_TOKEN_LIFETIME)
            tokens = TokenAuthority(client_id or "", client_secret or "", binding=conn_id, lifetime=lifetime)
        allowed = parse_networks(pick(options.allowed_ips, "callback_allowed_ips"), "callback_allowed_ips")
        proxies = parse_networks(
            pick(options.trusted_proxies, "callback_trusted_proxies"), "callback_trusted_proxies"
        )
        mapping = options.mapping or FieldMapping.from_dict(pick(None, "callback_field_map"))
        store = options.store or get_store(config.store_url)  # type: ignore[union-attr]
    except (ValueError, TypeError) as exc:
        raise ReceiverNotConfigured(f"connection {conn_id!r}: {exc}") from None
    if proxies and not allowed:
        raise ReceiverNotConfigured(f"connection {conn_id!r}: callback_trusted_proxies without an allow-list")
    log.info("Kaleyra callbacks go to %s", redact_url(store.url))
    return ReceiverSettings(
        store=store,
        secret=secret or None,
        tokens=tokens,
        allow=AllowList(allowed, proxies) if allowed else None,
        mapping=mapping,
        region=options.region or pick(None, "default_region"),
        intake=GroupCommit(store),
    )


class LazySettings:
    """Settings built on the first request, then kept; a failure is retried after a while."""

    def __init__(self, options: ReceiverOptions) -> None:
        self.options = options
        self._settings: ReceiverSettings | None = None
        self._failed_at = 0.0
        self._failure = ""
        self._lock = threading.Lock()

    @property
    def resolved(self) -> ReceiverSettings | None:
        return self._settings

    def get(self) -> ReceiverSettings:
        if self._settings is not None:
            return self._settings
        with self._lock:
            if self._settings is not None:
                return self._settings
            if self._failure and time.monotonic() - self._failed_at < _RETRY_CONFIG_AFTER:
                raise ReceiverNotConfigured(self._failure)
            try:
                self._settings = build_settings(self.options)
            except ReceiverNotConfigured as exc:
                self._failure, self._failed_at = str(exc), time.monotonic()
                log.error("Kaleyra callback receiver is not configured: %s", exc)
                raise
            return self._settings
