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

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_kaleyra.callbacks.intake import GroupCommit
from airflow_provider_kaleyra.callbacks.parsing import FieldMapping, RawCallback, parse_callback
from airflow_provider_kaleyra.callbacks.store import CallbackStore, get_store
from airflow_provider_kaleyra.config import DEFAULT_CONN_ID
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


def _presented_secrets(headers: Mapping[str, str]) -> list[str]:
    """Secrets the caller offers: ``X-Kaleyra-Secret``, ``Bearer`` token, or Basic password."""
    offered = []
    if header := headers.get(SECRET_HEADER):
        offered.append(header.strip())
    scheme, _, value = (headers.get("authorization") or "").strip().partition(" ")
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
    for offered in _presented_secrets(headers):
        ok |= hmac.compare_digest(offered.encode(), expected)
    return ok


def _kept_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's headers as stored with the callback: 64 at most, values cut, no credentials."""
    kept = {}
    for name, value in raw[:64]:
        key = name.decode("latin-1").lower()
        if key not in _PRIVATE_HEADERS:
            kept[key] = value.decode("latin-1")[:512]
    return kept


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": "error", "detail": detail}, status_code=status, headers=headers)


def _accepted(new: bool, results: int, parse_error: str | None) -> Response:
    """The 202 answer, encoded by hand: JSONResponse's generic encoder cost as much as the store."""
    tail = b"null}" if parse_error is None else json.dumps(parse_error).encode() + b"}"
    body = b'{"status":"accepted","duplicate":%s,"results":%d,"parse_error":' % (
        b"false" if new else b"true",
        results,
    )
    return Response(body + tail, status_code=202, media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it exceeds ``limit`` (the rest is never buffered)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


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

    async def soip_callback(request: Request) -> Response:
        try:  # resolved once (reading the connection may block); then no thread hop per request
            current = settings.resolved or await run_in_threadpool(settings.get)
        except ReceiverNotConfigured:
            return _error(503, "callback receiver is not configured; see the server log")
        if not is_authorized(request.headers, current.secret):
            client = request.client.host if request.client else "?"
            log.warning("Refused an unauthenticated Kaleyra callback from %s", client)
            return _error(
                401, "missing or wrong callback secret", {"WWW-Authenticate": 'Basic realm="kaleyra"'}
            )
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return _error(400, "invalid Content-Length")
            if int(declared) > max_body_bytes:
                return _error(413, f"body larger than {max_body_bytes} bytes")
        # a declared length was checked above (the server holds the body to it); chunked: read capped
        body = await request.body() if declared is not None else await _read_body(request, max_body_bytes)
        if body is None:
            return _error(413, f"body larger than {max_body_bytes} bytes")
        raw = RawCallback(
            method=request.method,
            body=body,
            content_type=request.headers.get("content-type"),
            query=request.scope.get("query_string", b"").decode("latin-1"),
            headers=_kept_headers(request.scope["headers"]),
            received_at=datetime.now(UTC),
        )
        if not body.strip() and not raw.query:
            return _error(400, "empty callback: no body and no query parameters")
        parsed = parse_callback(raw, current.mapping, current.region)
        try:
            new = await current.intake.add(raw, parsed)
        except Exception:
            log.exception("Could not store a Kaleyra callback")
            return _error(503, "callback store unavailable; retry later", {"Retry-After": "30"})
        if parsed.error:
            log.warning("Stored a Kaleyra callback that could not be fully read: %s", parsed.error)
        return _accepted(new, len(parsed.results), parsed.error)

    # a plain Starlette route: FastAPI's dependency solving and validation cost ~15 us per request here
    app.add_route(f"{path_prefix}{CALLBACK_PATH}", soip_callback, methods=["GET", "POST", "PUT"])

    return app


def create_standalone_app(**kwargs: Any) -> FastAPI:
    """The receiver under ``/kaleyra`` as on the API server, so callback URLs look the same either way.

    Routes carry the prefix rather than a mount: a mounted app runs a second middleware stack per request.
    """
    return create_app(path_prefix=URL_PREFIX, **kwargs)
