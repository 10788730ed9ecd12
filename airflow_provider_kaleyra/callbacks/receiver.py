"""HTTP endpoint for Kaleyra's SOIP callbacks, mounted on the Airflow API server or run standalone.

Airflow does not authenticate plugin routes, so this app checks a shared secret itself, before it
reads a single byte of the body. Every authenticated callback is stored raw, then parsed; one that
cannot be parsed is kept and flagged, never dropped, so nothing Kaleyra sends is lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from airflow_provider_kaleyra.callbacks.auth import SECRET_HEADER, is_authorized, presented_client
from airflow_provider_kaleyra.callbacks.logs import redact_access_log, redact_query
from airflow_provider_kaleyra.callbacks.parsing import RawCallback, parse_callback
from airflow_provider_kaleyra.callbacks.settings import (
    CONN_ID_ENV,
    LazySettings,
    ReceiverNotConfigured,
    ReceiverSettings,
    build_settings,
)
from airflow_provider_kaleyra.callbacks.store import CallbackStore

log = logging.getLogger(__name__)

__all__ = ["CALLBACK_PATH", "CONN_ID_ENV", "TOKEN_PATH", "URL_PREFIX", "ReceiverNotConfigured", "create_app"]

MAX_BODY_BYTES = 1024 * 1024
MAX_TOKEN_REQUEST_BYTES = 16 * 1024
CALLBACK_PATH = "/soip/callback"
TOKEN_PATH = "/soip/token"
URL_PREFIX = "/kaleyra"
_PRIVATE_HEADERS = {"authorization", "proxy-authorization", "cookie", SECRET_HEADER}
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _headers(raw: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], dict[str, str]]:
    """One pass over the request's headers: (all of them, as stored with the callback).

    What is stored is 64 headers at most, values cut, and no credentials.
    """
    every: dict[str, str] = {}
    kept: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        every.setdefault(key, text)
        if len(kept) < 64 and key not in _PRIVATE_HEADERS:
            kept[key] = text[:512]
    return every, kept


async def _answer(send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
    """A JSON answer, sent as the two ASGI messages (no Response object: it cost as much as the store)."""
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    start = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    await _answer(send, status, json.dumps({"status": "error", "detail": detail}).encode(), headers)


async def _accepted(send: Send, new: bool, results: int, parse_error: str | None) -> None:
    body = b'{"status":"accepted","duplicate":%s,"results":%d,"parse_error":%s}' % (
        b"false" if new else b"true",
        results,
        b"null" if parse_error is None else json.dumps(parse_error).encode(),
    )
    await _answer(send, 202, body)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it exceeds ``limit`` or the client hangs up (never buffered past it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # http.disconnect: nothing to store, nobody to answer
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _settings_or_refusal(settings: LazySettings, scope: Scope, send: Send) -> ReceiverSettings | None:
    """The settings, once the sender passed the allow-list; else ``None`` (and the request is answered).

    The query string is redacted in the scope first: Airflow's access log reads it after the answer.
    """
    if scope.get("query_string"):  # (the receiver itself has kept the real one, see RawCallback)
        scope["kaleyra_query"] = scope["query_string"].decode("latin-1")
        scope["query_string"] = redact_query(scope["kaleyra_query"]).encode("latin-1")
    try:  # resolved once (reading the connection may block); then no thread hop per request
        current = settings.resolved or await run_in_threadpool(settings.get)
    except ReceiverNotConfigured:
        await _error(send, 503, "callback receiver is not configured; see the server log")
        return None
    if current.allow is not None:
        peer = scope["client"][0] if scope.get("client") else None
        forwarded = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"), None)
        if not current.allow.admits(peer, forwarded):
            log.warning("Refused a Kaleyra callback request from %s: not in the allow-list", peer)
            await _error(send, 403, "sender not allowed")
            return None
    return current


def _refused(scope: Scope, what: str) -> None:
    client = scope["client"][0] if scope.get("client") else "?"
    log.warning("Refused an unauthenticated Kaleyra %s from %s", what, client)


class _CallbackEndpoint:
    """The callback route as a plain ASGI app: Starlette's Request and Response cost ~25 us a callback.

    (Starlette runs an ASGI object given to a route as is; the route still answers 405 to other methods.)
    """

    def __init__(self, settings: LazySettings, max_body_bytes: int) -> None:
        self.settings = settings
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_bytes
        current = await _settings_or_refusal(self.settings, scope, send)
        if current is None:
            return None
        headers, kept = _headers(scope["headers"])
        if not is_authorized(headers, current.secret, current.tokens):
            _refused(scope, "callback")
            scheme = (
                'Bearer realm="kaleyra", error="invalid_token"' if current.tokens else 'Basic realm="kaleyra"'
            )
            return await _error(
                send, 401, "missing or wrong callback credentials", {"WWW-Authenticate": scheme}
            )
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return await _error(send, 400, "invalid Content-Length")
            if int(declared) > limit:
                return await _error(send, 413, f"body larger than {limit} bytes")
        body = await _read_body(receive, limit)
        if body is None:
            return await _error(send, 413, f"body larger than {limit} bytes")
        raw = RawCallback(
            method=scope["method"],
            body=body,
            content_type=headers.get("content-type"),
            query=scope.get("kaleyra_query", ""),
            headers=kept,
            received_at=datetime.now(UTC),
        )
        if not body.strip() and not raw.query:
            return await _error(send, 400, "empty callback: no body and no query parameters")
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
        await _accepted(send, new, len(parsed.results), parsed.error)


class _TokenEndpoint:
    """Advanced auth: client ID and secret (Basic, JSON, form or query) in, a Bearer token out."""

    def __init__(self, settings: LazySettings) -> None:
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        current = await _settings_or_refusal(self.settings, scope, send)
        if current is None:
            return None
        if current.tokens is None:
            return await _error(send, 404, "advanced callback auth is not configured on this connection")
        headers, _ = _headers(scope["headers"])
        body = await _read_body(receive, MAX_TOKEN_REQUEST_BYTES)
        if body is None:
            return await _error(send, 413, f"body larger than {MAX_TOKEN_REQUEST_BYTES} bytes")
        client = presented_client(
            headers.get("authorization"), body, headers.get("content-type"), scope.get("kaleyra_query", "")
        )
        if client is None or not current.tokens.client_matches(*client):
            _refused(scope, "token request")
            body = b'{"error":"invalid_client"}'
            return await _answer(send, 401, body, {"WWW-Authenticate": 'Basic realm="kaleyra"', **_NO_STORE})
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
    """Build the receiver app; what is not given is read from the ``kaleyra`` connection on first request.

    ``secret``, ``client_id``, ``client_secret``, ``token_lifetime``, ``allowed_ips`` and
    ``trusted_proxies`` stand for the connection's extras ``callback_<name>``, ``store`` for
    ``callback_store_url``; the payload mapping and region always come from the connection.

    :param conn_id: connection to read; default: env ``KALEYRA_CALLBACK_CONN_ID`` or ``kaleyra_default``.
        Advanced-auth tokens are bound to it: another connection's token is refused.
    :param max_body_bytes: larger bodies are refused with 413.
    :param path_prefix: put before the routes' paths (the API server mounts the app under its own).
    """
    build = partial(
        build_settings,
        conn_id,
        store,
        secret=secret,
        client_id=client_id,
        client_secret=client_secret,
        token_lifetime=token_lifetime,
        allowed_ips=allowed_ips,
        trusted_proxies=trusted_proxies,
    )
    settings = LazySettings(build)
    app = FastAPI(title="Kaleyra SOIP callback receiver", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.kaleyra_settings = settings

    @app.get(f"{path_prefix}/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_route(
        f"{path_prefix}{CALLBACK_PATH}",
        _CallbackEndpoint(settings, max_body_bytes),
        methods=["GET", "POST", "PUT", "DELETE"],
    )
    app.add_route(f"{path_prefix}{TOKEN_PATH}", _TokenEndpoint(settings), methods=["GET", "POST", "PUT"])
    return app


def create_standalone_app(**kwargs: Any) -> FastAPI:
    """The receiver under ``/kaleyra`` as on the API server, so callback URLs look the same either way.

    Routes carry the prefix rather than a mount: a mounted app runs a second middleware stack per request.
    Served by uvicorn, whose access log gets its query strings redacted.
    """
    redact_access_log()
    return create_app(path_prefix=URL_PREFIX, **kwargs)
