"""HTTP endpoint for Kaleyra's SOIP callbacks, mounted on the Airflow API server or run standalone.

Airflow does not authenticate plugin routes, so this app checks a shared secret itself, before it
reads a single byte of the body. Every authenticated callback is stored raw, then parsed; one that
cannot be parsed is kept and flagged, never dropped, so nothing Kaleyra sends is lost.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from airflow_provider_kaleyra.callbacks.intake import GroupCommit
from airflow_provider_kaleyra.callbacks.parsing import FieldMapping, RawCallback, parse_callback
from airflow_provider_kaleyra.callbacks.store import CallbackStore, get_store
from airflow_provider_kaleyra.client.config import DEFAULT_CONN_ID
from airflow_provider_kaleyra.utils.database import redact_url

log = logging.getLogger(__name__)

CONN_ID_ENV = "KALEYRA_CALLBACK_CONN_ID"
SECRET_HEADER = "x-kaleyra-secret"
MAX_BODY_BYTES = 1024 * 1024
CALLBACK_PATH = "/soip/callback"
URL_PREFIX = "/kaleyra"
_RETRY_CONFIG_AFTER = 15.0  # seconds between connection look-ups while misconfigured
_PRIVATE_HEADERS = {"authorization", "proxy-authorization", "cookie", SECRET_HEADER}


class ReceiverNotConfigured(Exception):
    """No secret or no store: the receiver refuses everything rather than accept unauthenticated data."""


@dataclass(frozen=True)
class ReceiverSettings:
    """What a request needs: where to store, what secret to expect, how to read payloads."""

    store: CallbackStore
    secret: str
    mapping: FieldMapping
    region: str | None
    intake: GroupCommit


class _LazySettings:
    """Settings resolved on the first request (not at import: the API server imports plugins early)."""

    def __init__(
        self,
        *,
        store: CallbackStore | None,
        secret: str | None,
        conn_id: str | None,
        mapping: FieldMapping | None,
        region: str | None,
    ) -> None:
        self._explicit = (store, secret, mapping, region)
        self._conn_id = conn_id
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
                self._settings = self._resolve()
            except ReceiverNotConfigured as exc:
                self._failure, self._failed_at = str(exc), time.monotonic()
                log.error("Kaleyra callback receiver is not configured: %s", exc)
                raise
            return self._settings

    def _resolve(self) -> ReceiverSettings:
        store, secret, mapping, region = self._explicit
        if store is not None and secret:
            return ReceiverSettings(store, secret, mapping or FieldMapping(), region, GroupCommit(store))
        conn_id = self._conn_id or os.environ.get(CONN_ID_ENV) or DEFAULT_CONN_ID
        config = _read_connection(conn_id)
        secret = secret or config.callback_secret
        if not secret:
            raise ReceiverNotConfigured(f"connection {conn_id!r} has no callback_secret extra")
        try:
            mapping = mapping or FieldMapping.from_dict(config.callback_field_map)
            store = store or get_store(config.store_url)
        except (ValueError, TypeError) as exc:
            raise ReceiverNotConfigured(f"connection {conn_id!r}: {exc}") from None
        log.info("Kaleyra callbacks go to %s", redact_url(store.url))
        return ReceiverSettings(store, secret, mapping, region or config.default_region, GroupCommit(store))


def _read_connection(conn_id: str) -> Any:
    """Through the hook, like every other component: one reading, secrets masked."""
    try:
        from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook

        return KaleyraHook(kaleyra_conn_id=conn_id).config
    except Exception as exc:
        raise ReceiverNotConfigured(
            f"cannot read connection {conn_id!r}: {type(exc).__name__}: {exc}"
        ) from None


def _presented_secrets(secret_header: str | None, authorization: str | None) -> list[str]:
    """Secrets the caller offers: ``X-Kaleyra-Secret``, ``Bearer`` token, or Basic password."""
    offered = []
    if secret_header and secret_header.strip():
        offered.append(secret_header.strip())
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        offered.append(value.strip())
    elif scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return offered
        offered.append(decoded.partition(":")[2])
    return offered


def is_authorized(headers: Mapping[str, str], secret: str) -> bool:
    """Constant-time comparison of every offered secret (an attacker learns nothing from timing)."""
    expected = secret.encode()
    ok = False
    for offered in _presented_secrets(headers.get(SECRET_HEADER), headers.get("authorization")):
        ok |= hmac.compare_digest(offered.encode(), expected)
    return ok


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


class _CallbackEndpoint:
    """The callback route as a plain ASGI app: Starlette's Request and Response cost ~25 us a callback.

    (Starlette runs an ASGI object given to a route as is; the route still answers 405 to other methods.)
    """

    def __init__(self, settings: _LazySettings, max_body_bytes: int) -> None:
        self.settings = settings
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings, limit = self.settings, self.max_body_bytes
        try:  # resolved once (reading the connection may block); then no thread hop per request
            current = settings.resolved or await run_in_threadpool(settings.get)
        except ReceiverNotConfigured:
            return await _error(send, 503, "callback receiver is not configured; see the server log")
        headers, kept = _headers(scope["headers"])
        if not is_authorized(headers, current.secret):
            client = scope["client"][0] if scope.get("client") else "?"
            log.warning("Refused an unauthenticated Kaleyra callback from %s", client)
            return await _error(
                send, 401, "missing or wrong callback secret", {"WWW-Authenticate": 'Basic realm="kaleyra"'}
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
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=kept,
            received_at=datetime.now(UTC),
        )
        if not body.strip() and not raw.query:
            return await _error(send, 400, "empty callback: no body and no query parameters")
        parsed = parse_callback(raw, current.mapping, current.region)
        try:
            new = await current.intake.add(raw, parsed)
        except Exception:
            log.exception("Could not store a Kaleyra callback")
            return await _error(send, 503, "callback store unavailable; retry later", {"Retry-After": "30"})
        if parsed.error:
            log.warning("Stored a Kaleyra callback that could not be fully read: %s", parsed.error)
        await _accepted(send, new, len(parsed.results), parsed.error)


def create_app(
    *,
    store: CallbackStore | None = None,
    secret: str | None = None,
    conn_id: str | None = None,
    field_map: FieldMapping | Mapping[str, Any] | None = None,
    region: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    path_prefix: str = "",
) -> FastAPI:
    """Build the receiver app; what is not given is read from the ``kaleyra`` connection on first request.

    :param store: where callbacks go; default: the connection's ``callback_store_url``.
    :param secret: the shared secret callers must present; default: the connection's ``callback_secret``.
    :param conn_id: connection to read; default: env ``KALEYRA_CALLBACK_CONN_ID`` or ``kaleyra_default``.
    :param field_map: payload keys and values to recognise; default: connection extra ``callback_field_map``.
    :param region: region for numbers that arrive without a country code; default: the connection's.
    :param max_body_bytes: larger bodies are refused with 413.
    :param path_prefix: put before the routes' paths (the API server mounts the app under its own).
    """
    mapping = (
        field_map
        if field_map is None or isinstance(field_map, FieldMapping)
        else FieldMapping.from_dict(field_map)
    )
    settings = _LazySettings(store=store, secret=secret, conn_id=conn_id, mapping=mapping, region=region)
    app = FastAPI(
        title="Kaleyra SOIP callback receiver",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.kaleyra_settings = settings

    @app.get(f"{path_prefix}/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_route(
        f"{path_prefix}{CALLBACK_PATH}",
        _CallbackEndpoint(settings, max_body_bytes),
        methods=["GET", "POST", "PUT"],
    )

    return app


def create_standalone_app(**kwargs: Any) -> FastAPI:
    """The receiver under ``/kaleyra`` as on the API server, so callback URLs look the same either way.

    Routes carry the prefix rather than a mount: a mounted app runs a second middleware stack per request.
    """
    return create_app(path_prefix=URL_PREFIX, **kwargs)
