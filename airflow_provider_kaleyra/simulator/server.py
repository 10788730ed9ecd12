"""A local, deterministic stand-in for the Kaleyra RCS and SOIP capability-check APIs.

Why: the provider must be tested (and benchmarked) against real HTTP, with real
connection pooling, throttling and failures, without touching Kaleyra. One server
answers both RCS and SOIP paths, so one base URL serves both connection extras.

Decisions the Kaleyra documents leave open (see ``shared/kaleyra-api``):

* An unknown SID in the path answers **401** (like a wrong key: a configuration
  error that retrying cannot fix).
* The bulk lookup, by default, **rejects** the whole request with 400 when any entry
  is not E.164-shaped, naming the bad entries (``bulk_invalid="drop"`` instead omits
  them from the answer). The 100..500 rule is checked after validation and de-dup.
* A single lookup needs the ``+`` (raw or ``%2B``); a bare number is a 400.
* RCS error bodies carry a numeric ``code`` (the HTTP status); SOIP and simulator
  error bodies carry string codes, since Kaleyra uses both.
* ``truncated`` answers 200 with a correct ``Content-Length`` but only the first half
  of the JSON body, so the connection stays usable and the client sees bad JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import math
import random
import re
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from base64 import b64encode
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from airflow_provider_kaleyra.api import (
    API_KEY_HEADER,
    BULK_MAX,
    BULK_MIN,
    RCS_BULK_PATH,
    RCS_SINGLE_PATH,
    SOIP_CHECK_PATH,
    soip_number,
)

log = logging.getLogger(__name__)

DEFAULT_SID = "AC-TEST-SID"
DEFAULT_API_KEY = "test-api-key-0123456789"

# Cheap shape check only: full phonenumbers validation is the client's job, and
# per-request parsing would cap the simulator far below the throughput it must sustain.
E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")
SOIP_DIGITS_RE = re.compile(r"^[1-9]\d{6,14}$")

CARRIERS = ("AT&T", "T-Mobile", "Verizon", "Google")
CARRIER_STATUSES = ("ACTIVE", "INACTIVE", "UNKNOWN")
FAULT_KINDS = ("error_5xx", "reset", "slow", "truncated", "bulk_missing", "bulk_extra", "rate_429")
ENDPOINTS = ("rcs_single", "rcs_bulk", "soip_check", "sim", "unknown")
MAX_BODY = 8 * 1024 * 1024
_REASONS = {s.value: s.phrase for s in HTTPStatus}

RCS_OK_CODE = "RCS702"
RCS_OK_MESSAGE = "Device Lookup successful"
SOIP_OK_CODE = "MSG402"
SOIP_OK_MESSAGE = "Request Successfully Processed"
SOIP_BAD_CODE = "RBC529"
SOIP_BAD_MESSAGE = "Invalid input or validation error!"


# --------------------------------------------------------------------------- answers


def _digest(digits: str, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(digits.encode(), digest_size=8, person=person).digest(), "big")


@lru_cache(maxsize=1 << 18)
def _rcs_fields(digits: str) -> tuple[str, str, bool]:
    h = _digest(digits, b"kaleyra-rcs")
    carrier = CARRIERS[h % len(CARRIERS)]
    bucket = (h >> 8) % 100
    status = "ACTIVE" if bucket < 80 else "INACTIVE" if bucket < 90 else "UNKNOWN"
    # Only active lines can be RCS-enabled: 80% active x 75% = ~60% enabled overall.
    enabled = status == "ACTIVE" and (h >> 16) % 100 < 75
    return carrier, status, enabled


def rcs_answer(e164: str) -> dict[str, Any]:
    """The simulator's device record for a number, as in a bulk answer (``deviceAddress`` with ``+``).

    Pure and stable across processes (blake2b of the digits), so tests and benchmarks
    can compute the expected result. The single lookup sends ``deviceAddress`` without ``+``.
    """
    digits = e164.strip().lstrip("+")
    carrier, status, enabled = _rcs_fields(digits)
    return {
        "deviceAddress": "+" + digits,
        "carrierId": carrier,
        "carrierStatus": status,
        "rcsEnabled": enabled,
    }


def soip_answer(e164: str) -> bool:
    """Whether the simulator reports the number as SMS-over-IP capable (~60%, stable hash)."""
    return _digest(e164.strip().lstrip("+"), b"kaleyra-soip") % 100 < 60


@lru_cache(maxsize=1 << 18)
def _bulk_fragment(address: str) -> str | None:
    """Pre-serialised JSON of one bulk device, or None when ``address`` is not E.164-shaped.

    Cached because a bulk answer is 500 of these and the same numbers come back in
    benchmarks: one dict lookup per number keeps the server well above 1,000 bulk req/s.
    """
    if not isinstance(address, str) or not E164_RE.match(address):
        return None
    return json.dumps(rcs_answer(address), separators=(",", ":"))


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CallbackAuth:
    """How SOIP callbacks authenticate: HTTP Basic, or one extra header (as a Kaleyra callback profile allows)."""

    kind: str  # "basic" or "header"
    name: str  # user name, or header name
    value: str = field(repr=False)  # password, or header value

    def __post_init__(self) -> None:
        if self.kind not in ("basic", "header"):
            raise ValueError(f"callback auth kind must be 'basic' or 'header', got {self.kind!r}")

    @classmethod
    def basic(cls, user: str, password: str) -> CallbackAuth:
        return cls("basic", user, password)

    @classmethod
    def header(cls, name: str, value: str) -> CallbackAuth:
        return cls("header", name, value)

    @classmethod
    def parse(cls, spec: str) -> CallbackAuth:
        """Parse ``basic:USER:PASSWORD`` or ``header:NAME:VALUE`` (CLI and HTTP config form)."""
        kind, sep, rest = spec.partition(":")
        name, sep2, value = rest.partition(":")
        if not sep or not sep2 or not name:
            raise ValueError("callback auth must look like 'basic:USER:PASSWORD' or 'header:NAME:VALUE'")
        return cls(kind.lower(), name, value)

    def headers(self) -> dict[str, str]:
        if self.kind == "basic":
            token = b64encode(f"{self.name}:{self.value}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        return {self.name: self.value}


_PROBABILITIES = ("error_5xx", "reset", "slow", "truncated", "bulk_missing", "bulk_extra", "rate_429")


@dataclass(frozen=True)
class SimulatorConfig:
    """Every knob of the simulator. Probabilities are per request, in [0, 1]."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 = any free port
    sid: str = DEFAULT_SID
    api_key: str = field(default=DEFAULT_API_KEY, repr=False)
    latency: float = 0.0  # seconds added to every API request
    rate_limit: float | None = None  # requests/s over all API endpoints; None or 0 = unlimited
    retry_after: bool = True  # send Retry-After with 429s
    # fault injection
    error_5xx: float = 0.0
    reset: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 2.0
    truncated: float = 0.0
    bulk_missing: float = 0.0
    bulk_extra: float = 0.0
    rate_429: float = 0.0
    seed: int | None = None
    # behaviour
    rcs_disabled: bool = False
    bulk_invalid: str = "reject"  # "reject": 400 naming bad entries; "drop": omit them from the answer
    # SOIP callbacks
    callback_url: str | None = None
    callback_delay: float = 0.0
    callback_auth: CallbackAuth | None = None
    callback_duplicates: bool = False
    callback_form: bool = False
    callback_retries: int = 3
    callback_timeout: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.callback_auth, str):
            object.__setattr__(self, "callback_auth", CallbackAuth.parse(self.callback_auth))
        elif isinstance(self.callback_auth, (tuple, list)):
            object.__setattr__(self, "callback_auth", CallbackAuth(*self.callback_auth))
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability and must be within [0, 1], got {value!r}")
        for name in ("latency", "slow_seconds", "callback_delay", "callback_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.rate_limit is not None and self.rate_limit < 0:
            raise ValueError("rate_limit must not be negative")
        if self.callback_retries < 0:
            raise ValueError("callback_retries must not be negative")
        if self.bulk_invalid not in ("reject", "drop"):
            raise ValueError("bulk_invalid must be 'reject' or 'drop'")

    def public(self) -> dict[str, Any]:
        """The config as JSON-friendly data, secrets masked (for ``GET /_sim/config``)."""
        data = dataclasses.asdict(self)
        data["api_key"] = "***"
        if self.callback_auth is not None:
            data["callback_auth"] = {"kind": self.callback_auth.kind, "name": self.callback_auth.name}
        return data


# --------------------------------------------------------------------------- helpers


class TokenBucket:
    """Requests per second with burst = rate, so an evenly paced client is never throttled."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take one token: 0.0 when allowed, else the seconds to wait for the next token."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate


class _Stats:
    """Thread-safe counters; one lock, since every update is a handful of integer adds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def snapshot(self, pending_callbacks: int) -> dict[str, Any]:
        with self._lock:
            c = dict(self._counts)

        def group(prefix: str, keys: tuple[str, ...] = ()) -> dict[str, int]:
            out = dict.fromkeys(keys, 0)
            out.update({k[len(prefix) :]: v for k, v in c.items() if k.startswith(prefix)})
            return out

        return {
            "connections": c.get("connections", 0),
            "requests": group("req.", ENDPOINTS),
            "responses": group("status."),
            "rate_limited": c.get("rate_limited", 0),
            "auth_failures": c.get("auth_failures", 0),
            "faults": group("fault.", FAULT_KINDS),
            "numbers_looked_up": group("numbers.", ("rcs", "soip")),
            "callbacks": {
                "sent": c.get("cb.sent", 0),
                "failed": c.get("cb.failed", 0),
                "retried": c.get("cb.retried", 0),
                "pending": pending_callbacks,
            },
        }


def _path_regex(template: str) -> re.Pattern[str]:
    """Turn an ``api.py`` path template into a regex, so paths are never re-typed here."""
    pattern = re.escape(template).replace(re.escape("{sid}"), "(?P<sid>[^/]+)")
    pattern = pattern.replace(re.escape("{number}"), "(?P<number>[^/]+)")
    return re.compile(f"^{pattern}/?$")


_SINGLE_RE = _path_regex(RCS_SINGLE_PATH)
_BULK_RE = _path_regex(RCS_BULK_PATH)
_SOIP_RE = _path_regex(SOIP_CHECK_PATH)


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _rcs_error(status: int, message: str, detail: dict[str, Any] | None = None) -> tuple[int, bytes]:
    return status, _json_bytes(
        {"code": status, "message": message, "data": {}, "error": detail or {"message": message}}
    )


def _str_error(
    status: int, code: str, message: str, detail: dict[str, Any] | None = None, data: Any = None
) -> tuple[int, bytes]:
    return status, _json_bytes(
        {
            "code": code,
            "message": message,
            "data": [] if data is None else data,
            "error": detail or {"error": message},
        }
    )


def _soip_bad(reason: str) -> tuple[int, bytes]:
    return _str_error(400, SOIP_BAD_CODE, SOIP_BAD_MESSAGE, {"error": reason})


def _mask(number: str) -> str:
    return number[:5] + "*" * max(0, len(number) - 7) + number[-2:] if len(number) > 7 else "***"


def _soip_numbers(body: bytes, content_type: str) -> tuple[list[str], str | None, str | None]:
    """Numbers (digits, de-duplicated), callback profile id, and an error reason or None.

    Tolerant on purpose: Kaleyra's own sample sends JSON-looking text as form data.
    """
    text = body.decode("utf-8", errors="replace").strip()
    payload: Any = None
    if "json" in content_type or text.startswith("{"):
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            if "json" in content_type:
                return [], None, "body is not valid JSON"
    if payload is None and text and not text.startswith("{"):
        form = urllib.parse.parse_qs(text, keep_blank_values=True)
        payload = {
            k.removesuffix("[]"): (v if len(v) > 1 or k.endswith("[]") else v[0]) for k, v in form.items()
        }
    if not isinstance(payload, dict):
        return [], None, "body must be a JSON object or form fields"
    raw = payload.get("number")
    profile = payload.get("callback_profile_id")
    profile = None if profile in (None, "") else str(profile)
    if isinstance(raw, str):
        items = raw.split(",")
    elif isinstance(raw, list):
        items = [part for item in raw for part in (item.split(",") if isinstance(item, str) else [item])]
    else:
        return [], profile, "number is required (a string, comma-separated string or list)"
    numbers: dict[str, None] = {}
    bad: list[str] = []
    for item in items:
        digits = soip_number(item.strip()) if isinstance(item, str) else str(item)
        if not SOIP_DIGITS_RE.match(digits):
            bad.append(str(item))
        else:
            numbers[digits] = None
    if bad:
        return [], profile, f"invalid number(s): {', '.join(bad[:10])}"
    if not numbers:
        return [], profile, "number is empty"
    return list(numbers), profile, None


# --------------------------------------------------------------------------- callbacks

# Callbacks go straight to the receiver: an HTTP(S)_PROXY in the environment must not intercept them.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _CallbackDispatcher:
    """Delivers SOIP callbacks after a delay, off the request path, with a few retries."""

    def __init__(self, sim: KaleyraSimulator) -> None:
        self._sim = sim
        self._heap: list[tuple[float, int, dict[str, Any], SimulatorConfig]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._pending = 0
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kaleyra-sim-callback")
        self._thread = threading.Thread(target=self._run, name="kaleyra-sim-callbacks", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending

    def schedule(self, payloads: list[dict[str, Any]], config: SimulatorConfig) -> None:
        due = time.monotonic() + config.callback_delay
        copies = 2 if config.callback_duplicates else 1
        with self._cond:
            for payload in payloads:
                for _ in range(copies):
                    heapq.heappush(self._heap, (due, next(self._seq), payload, config))
                    self._pending += 1
            self._cond.notify()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopping:
                    return
                _, _, payload, config = heapq.heappop(self._heap)
            try:
                self._pool.submit(self._deliver, payload, config)
            except RuntimeError:  # pool shut down under us
                return

    def _deliver(self, payload: dict[str, Any], config: SimulatorConfig) -> None:
        try:
            if config.callback_form:
                fields = {
                    k: ("true" if v is True else "false" if v is False else "" if v is None else v)
                    for k, v in payload.items()
                }
                body = urllib.parse.urlencode(fields).encode()
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
            else:
                body = _json_bytes(payload)
                headers = {"Content-Type": "application/json"}
            if config.callback_auth is not None:
                headers.update(config.callback_auth.headers())
            for attempt in range(config.callback_retries + 1):
                if attempt:
                    self._sim._stats.add("cb.retried")
                    time.sleep(min(0.05 * 2**attempt, 2.0))
                outcome = self._post(config, body, headers)
                if outcome == "sent":
                    self._sim._stats.add("cb.sent")
                    return
                if outcome == "failed":
                    break
            self._sim._stats.add("cb.failed")
            log.warning(
                "Callback for %s to %s failed after %s attempts",
                _mask(payload["number"]),
                config.callback_url,
                config.callback_retries + 1,
            )
        finally:
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

    @staticmethod
    def _post(config: SimulatorConfig, body: bytes, headers: dict[str, str]) -> str:
        """``sent``, ``retry``, or ``failed`` (a 4xx other than 408/429: retrying will not help)."""
        request = urllib.request.Request(config.callback_url or "", data=body, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=config.callback_timeout) as response:
                response.read()
                return "sent"
        except urllib.error.HTTPError as exc:
            exc.close()
            log.debug("Callback answered HTTP %s", exc.code)
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                return "failed"
            return "retry"
        except (OSError, ValueError) as exc:
            log.debug("Callback delivery error: %s", exc)
            return "retry"


# --------------------------------------------------------------------------- HTTP


class _Reset(Exception):
    """Raised inside a handler to drop the connection without answering."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "KaleyraSimulator"
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are closed after this
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    # -- plumbing

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Write status, headers and body in one send: no Nagle/delayed-ACK stalls, exact Content-Length."""
        reason = _REASONS.get(status, "")
        lines = [
            f"HTTP/1.1 {status} {reason}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        if headers:
            lines.extend(f"{k}: {v}" for k, v in headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + body)
        self.server.sim._stats.add(f"status.{status}")

    def _reset_connection(self) -> None:
        """Close with RST (SO_LINGER 0) and no answer, as a flaky load balancer would."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass

    def _dispatch(self, method: str) -> None:
        sim = self.server.sim
        config = sim.config  # one consistent snapshot for the whole request
        path = urllib.parse.urlsplit(self.path).path
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(*_str_error(413, "413", "Request body too large or malformed"))
            return
        try:
            status, payload, headers = self._route(sim, config, method, path, body)
        except _Reset:
            self._reset_connection()
            return
        except Exception:  # the simulator must never hang a client on its own bug
            log.exception("Simulator error on %s %s", method, path)
            status, payload, headers = (*_str_error(500, "SIM500", "Simulator internal error"), None)
        self._send(status, payload, headers)

    # -- routing and API behaviour

    def _route(
        self, sim: KaleyraSimulator, config: SimulatorConfig, method: str, path: str, body: bytes
    ) -> tuple[int, bytes, dict[str, str] | None]:
        if path.startswith("/_sim/"):
            sim._stats.add("req.sim")
            return (*self._control(sim, method, path, body), None)

        match = None
        for endpoint, regex, allowed in (  # noqa: B007 - used after the break
            ("rcs_bulk", _BULK_RE, "POST"),
            ("rcs_single", _SINGLE_RE, "GET"),
            ("soip_check", _SOIP_RE, "POST"),
        ):
            match = regex.match(path)
            if match:
                break
        if not match:
            sim._stats.add("req.unknown")
            return (*_str_error(404, "404", "Not Found", {"path": path}), None)
        sim._stats.add(f"req.{endpoint}")
        is_rcs = endpoint != "soip_check"
        if method != allowed:
            return (*_str_error(405, "405", "Method Not Allowed", {"allowed": allowed}), {"Allow": allowed})

        if config.latency:
            time.sleep(config.latency)

        if sim._bucket is not None:
            wait = sim._bucket.take()
            if wait:
                return self._too_many(sim, config, wait)

        faults = sim._roll(config)
        if "reset" in faults:
            raise _Reset
        if "error_5xx" in faults:
            status = sim._choice((500, 502, 503, 504))
            message = "Temporal error, try again later" if status == 503 else HTTPStatus(status).phrase
            return (
                *(_rcs_error(status, message) if is_rcs else _str_error(status, str(status), message)),
                None,
            )
        if "rate_429" in faults:
            return self._too_many(sim, config, 1.0)
        if "slow" in faults:
            time.sleep(config.slow_seconds)

        error = self._check_auth(sim, config, match.group("sid"), is_rcs)
        if error is not None:
            return (*error, None)

        if endpoint == "rcs_single":
            status, payload = self._rcs_single(sim, match.group("number"))
        elif endpoint == "rcs_bulk":
            status, payload = self._rcs_bulk(sim, config, body)
        else:
            status, payload = self._soip(sim, config, body)

        if status == 200 and "truncated" in faults:
            sim._stats.add("fault.truncated")
            payload = payload[: max(1, len(payload) // 2)]
        return status, payload, None

    def _too_many(
        self, sim: KaleyraSimulator, config: SimulatorConfig, wait: float
    ) -> tuple[int, bytes, dict[str, str] | None]:
        sim._stats.add("rate_limited")
        headers = {"Retry-After": str(max(1, math.ceil(wait)))} if config.retry_after else None
        return (*_str_error(429, "429", "Throttling", {"error": "Too many requests"}, data={}), headers)

    def _check_auth(
        self, sim: KaleyraSimulator, config: SimulatorConfig, sid: str, is_rcs: bool
    ) -> tuple[int, bytes] | None:
        key = self.headers.get(API_KEY_HEADER)
        problem = None
        if not key or not hmac.compare_digest(key.encode(), config.api_key.encode()):
            problem = "Invalid or missing API key"
        elif urllib.parse.unquote(sid) != config.sid:
            problem = "Unknown account SID"
        elif is_rcs and config.rcs_disabled:
            problem = "RCS channel is not configured for this account"
        if problem is None:
            return None
        sim._stats.add("auth_failures")
        return _rcs_error(401, problem) if is_rcs else _str_error(401, "RBC201", problem)

    def _rcs_single(self, sim: KaleyraSimulator, raw: str) -> tuple[int, bytes]:
        number = urllib.parse.unquote(raw)
        if not E164_RE.match(number):
            return _rcs_error(
                400, "Invalid device address", {"deviceAddress": "must be E.164 with a leading +"}
            )
        device = rcs_answer(number)
        device["deviceAddress"] = device["deviceAddress"][1:]  # Kaleyra's single sample drops the +
        sim._stats.add("numbers.rcs")
        return 200, _json_bytes({"code": RCS_OK_CODE, "message": RCS_OK_MESSAGE, "data": device, "error": {}})

    def _rcs_bulk(self, sim: KaleyraSimulator, config: SimulatorConfig, body: bytes) -> tuple[int, bytes]:
        try:
            request = json.loads(body)
        except ValueError:
            return _rcs_error(400, "Request body must be JSON")
        addresses = request.get("deviceAddresses") if isinstance(request, dict) else None
        if not isinstance(addresses, list):
            return _rcs_error(400, "deviceAddresses must be an array of strings")
        unique: dict[str, str] = {}
        invalid: list[str] = []
        for address in addresses:
            fragment = _bulk_fragment(address) if isinstance(address, str) else None
            if fragment is None:
                invalid.append(str(address))
            elif address not in unique:
                unique[address] = fragment
        if invalid and config.bulk_invalid == "reject":
            return _rcs_error(
                400, "Invalid device addresses", {"invalid": invalid[:20], "invalid_count": len(invalid)}
            )
        if not BULK_MIN <= len(unique) <= BULK_MAX:
            return _rcs_error(
                400,
                f"deviceAddresses must hold {BULK_MIN} to {BULK_MAX} distinct valid E.164 numbers",
                {"count": len(unique), "min": BULK_MIN, "max": BULK_MAX},
            )
        fragments = list(unique.values())
        sim._stats.add("numbers.rcs", len(fragments))
        if config.bulk_missing and sim._chance(config.bulk_missing):
            sim._stats.add("fault.bulk_missing")
            drop = max(1, len(fragments) // 20)
            for index in sorted(sim._sample(range(len(fragments)), drop), reverse=True):
                del fragments[index]
        if config.bulk_extra and sim._chance(config.bulk_extra):
            sim._stats.add("fault.bulk_extra")
            for _ in range(3):
                extra = "+1999" + str(sim._randint(1000000, 9999999))
                if extra not in unique:
                    fragments.append(_bulk_fragment(extra) or "")
        return 200, ('{"devices":[' + ",".join(fragments) + "]}").encode()

    def _soip(self, sim: KaleyraSimulator, config: SimulatorConfig, body: bytes) -> tuple[int, bytes]:
        numbers, profile, error = _soip_numbers(body, (self.headers.get("Content-Type") or "").lower())
        if error:
            return _soip_bad(error)
        sim._stats.add("numbers.soip", len(numbers))
        if config.callback_url:
            request_id = uuid.uuid4().hex
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            payloads = []
            for digits in numbers:
                capable = soip_answer(digits)
                payloads.append(
                    {
                        "number": digits,
                        "soip_capable": capable,
                        "status": "capable" if capable else "not_capable",
                        "callback_profile_id": profile,
                        "request_id": request_id,
                        "timestamp": stamp,
                    }
                )
            sim._callbacks.schedule(payloads, config)
        return 202, _json_bytes({"code": SOIP_OK_CODE, "message": SOIP_OK_MESSAGE, "data": [], "error": {}})

    def _control(self, sim: KaleyraSimulator, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if path == "/_sim/stats" and method == "GET":
            return 200, _json_bytes(sim.stats())
        if path == "/_sim/reset" and method == "POST":
            sim.reset_stats()
            return 200, _json_bytes({"reset": True})
        if path == "/_sim/config" and method == "GET":
            return 200, _json_bytes(sim.config.public())
        if path == "/_sim/config" and method == "POST":
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("config changes must be a JSON object")
                sim.configure(**changes)
            except (TypeError, ValueError) as exc:
                return _str_error(400, "SIM400", "Bad simulator config", {"error": str(exc)})
            return 200, _json_bytes(sim.config.public())
        return _str_error(404, "404", "Not Found", {"path": path})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # the default 5 drops SYNs when a client pool opens many connections at once

    def __init__(self, address: tuple[str, int], sim: KaleyraSimulator) -> None:
        self.sim = sim
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        self.sim._stats.add("connections")
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, resets) are normal here: log quietly, not a traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("Connection from %s ended: %s", client_address, exc)
        else:
            log.exception("Simulator error while serving %s", client_address)

    def close_open_connections(self) -> None:
        """Wake keep-alive handler threads blocked on idle sockets, so stop() leaves nothing behind."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --------------------------------------------------------------------------- public


def simulator_connection(
    url: str, *, sid: str = DEFAULT_SID, api_key: str = DEFAULT_API_KEY, **extra: Any
) -> dict[str, Any]:
    """An Airflow ``kaleyra`` connection (JSON form) whose RCS and SOIP base URLs are ``url``.

    The one place tests, benchmarks and examples build it; ``extra`` adds or overrides
    connection extras (``default_region``, ``rate_limit``, ...). ``json.dumps`` it into
    ``AIRFLOW_CONN_<ID>``. For a running simulator, :meth:`KaleyraSimulator.connection`.
    """
    return {
        "conn_type": "kaleyra",
        "login": sid,
        "password": api_key,
        "extra": {"rcs_base_url": url, "soip_base_url": url, **extra},
    }


class KaleyraSimulator:
    """A running simulator: ``with KaleyraSimulator(SimulatorConfig()) as sim: requests.get(sim.url + ...)``."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._config = config or SimulatorConfig()
        self._stats = _Stats()
        self._rng = random.Random(self._config.seed)
        self._rng_lock = threading.Lock()
        self._bucket = TokenBucket(self._config.rate_limit) if self._config.rate_limit else None
        self._config_lock = threading.Lock()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._callbacks: _CallbackDispatcher | None = None

    # -- lifecycle

    def start(self) -> KaleyraSimulator:
        """Bind (port 0 = a free port) and serve from a background thread."""
        if self._server is not None:
            return self
        self._server = _HTTPServer((self._config.host, self._config.port), self)
        self._callbacks = _CallbackDispatcher(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="kaleyra-simulator",
            daemon=True,
        )
        self._thread.start()
        log.info("Kaleyra simulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and pending callbacks."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_open_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._callbacks is not None:
            self._callbacks.stop()
        log.info("Kaleyra simulator stopped")

    def __enter__(self) -> KaleyraSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- introspection and control

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    @property
    def host(self) -> str:
        return self._config.host

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Base URL for both ``rcs_base_url`` and ``soip_base_url``."""
        return f"http://{self.host}:{self.port}"

    def connection(self, **extra: Any) -> dict[str, Any]:
        """An Airflow connection to this simulator (its SID and key): see :func:`simulator_connection`."""
        return simulator_connection(self.url, sid=self._config.sid, api_key=self._config.api_key, **extra)

    def connection_json(self, **extra: Any) -> str:
        """:meth:`connection` as the JSON an ``AIRFLOW_CONN_<ID>`` variable holds."""
        return json.dumps(self.connection(**extra))

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Change knobs at runtime (host/port excluded); new requests see the new config."""
        if {"host", "port"} & changes.keys():
            raise ValueError("host and port cannot change while running")
        with self._config_lock:
            new = dataclasses.replace(self._config, **changes)
            if "rate_limit" in changes:
                self._bucket = TokenBucket(new.rate_limit) if new.rate_limit else None
            if "seed" in changes:
                with self._rng_lock:
                    self._rng = random.Random(new.seed)
            self._config = new
        return new

    def stats(self) -> dict[str, Any]:
        """Counters: TCP connections, requests per endpoint, responses per status, 429s, faults, numbers, callbacks."""
        return self._stats.snapshot(self._callbacks.pending if self._callbacks else 0)

    def reset_stats(self) -> None:
        """Zero the counters and refill the rate-limit bucket."""
        self._stats.reset()
        with self._config_lock:
            if self._config.rate_limit:
                self._bucket = TokenBucket(self._config.rate_limit)

    def wait_callbacks(self, timeout: float = 10.0) -> bool:
        """Block until every scheduled callback was delivered or gave up; False on timeout."""
        return self._callbacks.wait_idle(timeout) if self._callbacks else True

    # -- fault RNG (seeded, shared, locked)

    def _roll(self, config: SimulatorConfig) -> set[str]:
        """Pick this request's faults: at most one of reset/5xx/429, plus maybe slow and truncated."""
        faults: set[str] = set()
        if not (config.reset or config.error_5xx or config.rate_429 or config.slow or config.truncated):
            return faults
        with self._rng_lock:
            for kind in ("reset", "error_5xx", "rate_429"):
                if getattr(config, kind) and self._rng.random() < getattr(config, kind):
                    faults.add(kind)
                    break
            for kind in ("slow", "truncated"):
                if getattr(config, kind) and self._rng.random() < getattr(config, kind):
                    faults.add(kind)
        for kind in faults - {"truncated"}:  # truncated is counted only when it hits a 200
            self._stats.add(f"fault.{kind}")
        return faults

    def _chance(self, p: float) -> bool:
        with self._rng_lock:
            return self._rng.random() < p

    def _choice(self, options: tuple[int, ...]) -> int:
        with self._rng_lock:
            return self._rng.choice(options)

    def _sample(self, population: range, k: int) -> list[int]:
        with self._rng_lock:
            return self._rng.sample(population, k)

    def _randint(self, a: int, b: int) -> int:
        with self._rng_lock:
            return self._rng.randint(a, b)
