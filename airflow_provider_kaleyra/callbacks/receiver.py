"""HTTP endpoint for Kaleyra's SOIP callbacks, on the Airflow API server or standalone. Airflow does not
authenticate plugin routes: credentials are checked from the head, before the body is read."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from airflow_provider_kaleyra.callbacks import auth
from airflow_provider_kaleyra.callbacks.bodies import FieldMapping, RawCallback, parse_callback
from airflow_provider_kaleyra.callbacks.store import CallbackStore, GroupCommit, get_store
from airflow_provider_kaleyra.client.config import DEFAULT_CONN_ID, DEFAULT_TOKEN_LIFETIME, KaleyraConfig
from airflow_provider_kaleyra.utils.database import redact_url

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_TOKEN_REQUEST_BYTES = 16 * 1024
CALLBACK_PATH = "/soip/callback"
TOKEN_PATH = "/soip/token"
URL_PREFIX = "/kaleyra"
_PRIVATE_HEADERS = {"authorization", "proxy-authorization", "cookie", auth.SECRET_HEADER}
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_BASIC = {"WWW-Authenticate": 'Basic realm="kaleyra"'}
_BEARER = {"WWW-Authenticate": 'Bearer realm="kaleyra", error="invalid_token"'}
REDACTED = "***"
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
        reason = f"{type(exc).__name__}: {exc}"
        raise ReceiverNotConfigured(f"cannot read connection {conn_id!r}: {reason}") from None


@dataclass(frozen=True)
class ReceiverSettings:
    """What a request needs: where to store, who may send, how to read payloads."""

    store: CallbackStore
    secret: str | None = field(repr=False)
    tokens: auth.TokenAuthority | None
    allow: auth.AllowList | None
    mapping: FieldMapping
    region: str | None
    intake: GroupCommit


class LazySettings:
    """Built on the first request (the API server imports plugins before a connection or a database may
    exist), then kept in ``resolved``; without a secret or a store, 503 until a later look-up succeeds."""

    def __init__(self, conn_id: str | None, store: CallbackStore | None, **given: Any) -> None:
        self.conn_id, self.store, self.given = conn_id, store, given
        self.resolved: ReceiverSettings | None = None
        self._failure, self._retry_at = "", 0.0
        self._lock = threading.Lock()

    def get(self) -> ReceiverSettings:
        with self._lock:
            if self.resolved is None and time.monotonic() < self._retry_at:
                raise ReceiverNotConfigured(self._failure)
            try:
                self.resolved = self.resolved or self._build()
            except ReceiverNotConfigured as exc:
                self._failure, self._retry_at = str(exc), time.monotonic() + _RETRY_CONFIG_AFTER
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
                tokens = auth.TokenAuthority(client_id, client_secret, binding=conn_id, lifetime=lifetime)
            allowed = auth.parse_networks(pick("allowed_ips", ()), "callback_allowed_ips")
            proxies = auth.parse_networks(pick("trusted_proxies", ()), "callback_trusted_proxies")
            if proxies and not allowed:
                raise ValueError("callback_trusted_proxies without an allow-list")
            mapping = FieldMapping.from_dict(pick("field_map"))
            store = store or get_store(config.store_url)  # type: ignore[union-attr]
        except (ValueError, TypeError) as exc:
            raise ReceiverNotConfigured(f"connection {conn_id!r}: {exc}") from None
        log.info("Kaleyra callbacks go to %s", redact_url(store.url))
        allow = auth.AllowList(allowed, proxies) if allowed else None
        region = getattr(config, "default_region", None)
        return ReceiverSettings(store, secret or None, tokens, allow, mapping, region, GroupCommit(store))


def redact_query(query: str) -> str:
    """``a=1&secret=x`` -> ``a=***&secret=***``, for access logs (a profile's URL may carry a secret, a
    GET callback the number, a GET token request the client secret); anything unreadable -> ``***``."""
    if not query:
        return query
    keys = [key for key, _ in parse_qsl(query, keep_blank_values=True)]  # lenient: it never raises
    return "&".join(f"{quote(key, safe='')[:64]}={REDACTED}" for key in keys) or REDACTED


def _redact_access_record(record: logging.LogRecord) -> bool:
    """uvicorn's access-log filter (every request, refused ones and unknown paths included); its
    records carry ``(client, method, target, version, status)``."""
    if isinstance(record.args, tuple):
        parts = [a.partition("?") if isinstance(a, str) else (a, "", "") for a in record.args]
        record.args = tuple(f"{path}?{redact_query(query)}" if sep else path for path, sep, query in parts)
    return True


async def _answer(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    start = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    await _answer(send, status, json.dumps({"status": "error", "detail": detail}).encode(), headers)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The body, or ``None`` once it exceeds ``limit`` or the client hangs up (never buffered past it)."""
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if message["type"] != "http.request" or len(body) > limit:
            return None  # too large, or http.disconnect: nothing to store, nobody to answer
        if not message.get("more_body", False):
            return bytes(body)


def _peer(scope: Scope) -> str | None:
    return scope["client"][0] if scope.get("client") else None


class _Endpoint:
    """What both routes do first: redact the query, resolve the settings, apply the allow-list. Plain ASGI
    (Starlette's Request and Response cost ~25 us a callback, as much as the store; a route given an
    ASGI app still answers 405 to other methods)."""

    def __init__(self, settings: LazySettings, max_body_bytes: int) -> None:
        self.settings, self.max_body_bytes = settings, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("query_string"):  # kept for the callback, redacted for the API server's access log
            scope["kaleyra_query"] = scope["query_string"].decode("latin-1")
            scope["query_string"] = redact_query(scope["kaleyra_query"]).encode("latin-1")
        try:  # resolved once (reading the connection may block); then no thread hop per request
            current = self.settings.resolved or await run_in_threadpool(self.settings.get)
        except ReceiverNotConfigured:
            return await _error(send, 503, "callback receiver is not configured; see the server log")
        peer, headers = _peer(scope), scope.setdefault("kaleyra_headers", {})  # the first of each name
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        if current.allow is not None and not current.allow.admits(peer, headers.get("x-forwarded-for")):
            log.warning("Refused a Kaleyra callback request from %s: not in the allow-list", peer)
            return await _error(send, 403, "sender not allowed")
        await self.handle(current, scope, receive, send)  # (defined by each route)


class _CallbackEndpoint(_Endpoint):
    async def handle(self, current: ReceiverSettings, scope: Scope, receive: Receive, send: Send) -> None:
        limit, query, headers = self.max_body_bytes, scope.get("kaleyra_query", ""), scope["kaleyra_headers"]
        if not auth.is_authorized(headers, current.secret, current.tokens):
            log.warning("Refused an unauthenticated Kaleyra callback from %s", _peer(scope))
            challenge = _BEARER if current.tokens else _BASIC
            return await _error(send, 401, "missing or wrong callback credentials", challenge)
        declared = headers.get("content-length")
        if declared is not None and not declared.strip().isdigit():
            return await _error(send, 400, "invalid Content-Length")
        body = None if declared is not None and int(declared) > limit else await _read_body(receive, limit)
        if body is None:
            return await _error(send, 413, f"body larger than {limit} bytes")
        if not body.strip() and not query:
            return await _error(send, 400, "empty callback: no body and no query parameters")
        # stored: 64 headers at most, values cut, no credentials
        kept = dict(islice(((k, v[:512]) for k, v in headers.items() if k not in _PRIVATE_HEADERS), 64))
        raw = RawCallback(scope["method"], body, headers.get("content-type"), query, kept, datetime.now(UTC))
        parsed = parse_callback(raw, current.mapping, current.region)
        if parsed.refused:
            log.warning("Refused a Kaleyra callback: %s", parsed.error)
            return await _error(send, 400, parsed.error or "refused")
        try:
            new = await current.intake.add(raw, parsed)
        except Exception as exc:  # nothing acknowledged that is not committed: Kaleyra sends it again
            reason = (str(exc).strip().splitlines() or [""])[0][:200]  # not the SQL and its parameters
            log.error("Could not store a Kaleyra callback (answered 503): %s: %s", type(exc).__name__, reason)
            return await _error(send, 503, "callback store unavailable; retry later", {"Retry-After": "30"})
        if parsed.error:
            log.warning("Stored a Kaleyra callback that could not be fully read: %s", parsed.error)
        error = b"null" if parsed.error is None else json.dumps(parsed.error).encode()
        answer = b'{"status":"accepted","duplicate":%s,"results":%d,"parse_error":%s}'
        await _answer(send, 202, answer % (b"false" if new else b"true", len(parsed.results), error))


class _TokenEndpoint(_Endpoint):
    """Advanced auth: client ID and secret (Basic, JSON, form or query) in, a Bearer token out."""

    async def handle(self, current: ReceiverSettings, scope: Scope, receive: Receive, send: Send) -> None:
        if current.tokens is None:
            return await _error(send, 404, "advanced callback auth is not configured on this connection")
        body = await _read_body(receive, self.max_body_bytes)
        if body is None:
            return await _error(send, 413, f"body larger than {self.max_body_bytes} bytes")
        client = auth.presented_client(scope["kaleyra_headers"], body, scope.get("kaleyra_query", ""))
        if client is None or not current.tokens.client_matches(*client):
            log.warning("Refused an unauthenticated Kaleyra token request from %s", _peer(scope))
            return await _answer(send, 401, b'{"error":"invalid_client"}', {**_BASIC, **_NO_STORE})
        await _answer(send, 200, json.dumps(current.tokens.issue()).encode(), _NO_STORE)


def create_app(
    *,
    store: CallbackStore | None = None,
    secret: str | None = None,
    conn_id: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    token_lifetime: timedelta | None = None,
    allowed_ips: tuple[str, ...] | None = None,
    trusted_proxies: tuple[str, ...] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    path_prefix: str = "",
) -> FastAPI:
    """The receiver app. Arguments not given come from the extras ``callback_<name>`` (``store``:
    ``callback_store_url``) of the connection ``conn_id`` (tokens are bound to it), read on the first
    request unless a store and a secret are given. Bodies over ``max_body_bytes`` get 413."""
    settings = LazySettings(
        conn_id,
        store,
        secret=secret,
        client_id=client_id,
        client_secret=client_secret,
        token_lifetime=token_lifetime,
        allowed_ips=allowed_ips,
        trusted_proxies=trusted_proxies,
    )
    app = FastAPI(title="Kaleyra SOIP callback receiver", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.kaleyra_settings = settings

    @app.get(f"{path_prefix}/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    callback = _CallbackEndpoint(settings, max_body_bytes)
    token = _TokenEndpoint(settings, MAX_TOKEN_REQUEST_BYTES)
    app.add_route(f"{path_prefix}{CALLBACK_PATH}", callback, methods=["GET", "POST", "PUT", "DELETE"])
    app.add_route(f"{path_prefix}{TOKEN_PATH}", token, methods=["GET", "POST", "PUT"])
    return app


def create_standalone_app(**kwargs: Any) -> FastAPI:
    """The receiver under ``/kaleyra`` as on the API server (a prefix, not a mount: no second middleware
    stack), for uvicorn, whose access log gets its query values redacted."""
    logging.getLogger("uvicorn.access").addFilter(_redact_access_record)  # added once, however often called
    return create_app(path_prefix=URL_PREFIX, **kwargs)
