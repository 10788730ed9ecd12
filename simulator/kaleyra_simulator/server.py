"""The simulator's HTTP both ways, so the provider is tested and benchmarked over real HTTP (pooling,
throttling, failures) without Kaleyra: requests in (:class:`KaleyraSimulator`, counters; the answers are
:mod:`.answers`) and SOIP callbacks out as a Kaleyra profile sends them (per number, after the delay, a few
retries; every body type, method and authentication; an advanced token kept till it expires or is refused)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

import requests
from requests.adapters import HTTPAdapter

from airflow_provider_kaleyra.numbers.masking import mask
from kaleyra_simulator.answers import TokenBucket, answer, json_bytes, soip_answer, str_error
from kaleyra_simulator.config import FAULT_KINDS, CallbackAuth, SimulatorConfig, simulator_connection

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
DELIVERY_THREADS = 16  # callbacks in flight: enough for the receiver, not the sender, to set the pace
TIMEOUT = 5.0  # seconds to wait for the receiver or its token URL


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are closed after this
    server: KaleyraSimulator

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _read_body(self) -> bytes:
        if "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower():
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ValueError("body too large")
            return self.rfile.read(length) if length > 0 else b""
        chunks, total = [], 0
        while size := int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16):
            if (total := total + size) > MAX_BODY:
                raise ValueError("body too large")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(chunks)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Write status, headers and body in one send: no Nagle/delayed-ACK stalls, exact Content-Length."""
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json"]
        head += [f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        head += ["Connection: close"] if self.close_connection else []
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        self.server._count(f"status.{status}")

    def _dispatch(self) -> None:
        method, path = self.command, urllib.parse.urlsplit(self.path).path
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            return self._send(*str_error(413, "413", "Request body too large or malformed"))
        try:
            reply = answer(self.server, method, path, self.headers, body)
        except Exception:  # the simulator must never hang a client on its own bug
            log.exception("Simulator error on %s %s", method, path)
            reply = str_error(500, "SIM500", "Simulator internal error")
        if reply is None:  # the reset fault: close with RST (SO_LINGER 0), as a flaky load balancer would
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            self._send(*reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


class KaleyraSimulator(ThreadingHTTPServer):
    """A simulator on 127.0.0.1 (bound at creation): ``with KaleyraSimulator(SimulatorConfig()) as sim:
    requests.get(sim.url + ...)``; :meth:`configure` changes its ``config`` while it runs."""

    request_queue_size = 512  # the default 5 drops SYNs when a client pool opens many connections at once

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()  # of the counters and the config
        self._rng = random.Random(self.config.seed)  # one for all threads: a seed replays the faults
        self._bucket = TokenBucket(self.config.rate_limit)
        self._callbacks = CallbackDispatcher(self._count)
        self._open: set[socket.socket] = set()  # to wake the threads of idle keep-alive connections at stop()
        self._serving = False
        super().__init__(("127.0.0.1", self.config.port), _Handler)

    def start(self) -> KaleyraSimulator:
        """Serve from a background thread."""
        self._serving = True
        threading.Thread(target=self.serve_forever, args=(0.1,), daemon=True).start()
        log.info("Kaleyra simulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and pending callbacks."""
        if self._serving:
            self.shutdown()
        self.server_close()
        for sock in list(self._open):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._callbacks.stop()

    def __enter__(self) -> KaleyraSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def process_request(self, request: Any, client_address: Any) -> None:
        self._open.add(request)
        self._count("connections")
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, resets) are normal here: no traceback on stderr."""
        log.debug("Connection from %s ended", client_address, exc_info=True)

    @property
    def url(self) -> str:
        """Base URL for both ``rcs_base_url`` and ``soip_base_url``."""
        return f"http://127.0.0.1:{self.server_port}"

    def connection_json(self, **extra: Any) -> str:
        """An ``AIRFLOW_CONN_<ID>`` to this simulator (its SID and key): see :func:`simulator_connection`."""
        sid, key = self.config.sid, self.config.api_key
        return json.dumps(simulator_connection(self.url, sid=sid, api_key=key, **extra))

    def configure(self, **changes: Any) -> None:
        """Change knobs at runtime (the port excluded); new requests see the new config."""
        if "port" in changes:
            raise ValueError("the port cannot change while running")
        with self._lock:
            self.config = dataclasses.replace(self.config, **changes)
            if "rate_limit" in changes:
                self._bucket = TokenBucket(self.config.rate_limit)
            if "seed" in changes:
                self._rng.seed(self.config.seed)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def stats(self) -> dict[str, Any]:
        """Counters, zeros included: connections, requests, responses, 429s, faults, callbacks, tokens..."""
        with self._lock:
            c = dict(self._counts)

        def group(prefix: str, *keys: str) -> dict[str, int]:
            counted = {k.removeprefix(prefix): v for k, v in c.items() if k.startswith(prefix)}
            return {**dict.fromkeys(keys, 0), **counted}

        return {
            **{k: c.get(k, 0) for k in ("connections", "rate_limited", "auth_failures", "callback_tokens")},
            "requests": group("req.", "rcs_single", "rcs_bulk", "soip_check", "sim", "unknown"),
            "responses": group("status."),
            "faults": group("fault.", *FAULT_KINDS),
            "numbers_looked_up": group("numbers.", "rcs", "soip"),
            "callbacks": {**group("cb.", "sent", "failed", "retried"), "pending": self._callbacks.pending},
        }

    def reset_stats(self) -> None:
        """Zero the counters and refill the rate-limit bucket."""
        with self._lock:
            self._counts.clear()
            self._bucket = TokenBucket(self.config.rate_limit)

    def wait_callbacks(self, timeout: float = 10.0) -> bool:
        """Block until every scheduled callback was delivered or gave up; False on timeout."""
        return self._callbacks.wait_idle(timeout)


def render(payload: dict[str, Any], config: SimulatorConfig) -> tuple[dict[str, str], bytes, dict[str, str]]:
    """(query parameters, body, headers) of one callback."""
    fields = {k: str(v).lower() if isinstance(v, bool) else str(v or "") for k, v in payload.items()}
    if config.callback_method == "GET":
        return fields, b"", {}
    if config.callback_body == "form":
        form = urllib.parse.urlencode(fields).encode()
        return {}, form, {"Content-Type": "application/x-www-form-urlencoded"}
    if config.callback_body == "xml":
        inner = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in fields.items())
        body = f'<?xml version="1.0" encoding="UTF-8"?><callback>{inner}</callback>'
        return {}, body.encode(), {"Content-Type": "application/xml"}
    if config.callback_body == "text":
        body = "\n".join(f"{k}={v}" for k, v in fields.items())
        return {}, body.encode(), {"Content-Type": "text/plain; charset=utf-8"}
    return {}, json_bytes(payload), {"Content-Type": "application/json"}


class CallbackDispatcher:
    """Delivers SOIP callbacks from a pool of threads, each waiting for its callback's time first."""

    def __init__(self, count: Callable[..., None]) -> None:
        self._count = count
        self._pool = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="kaleyra-sim-callback")
        # keep-alive connections, up to one per thread (a new one per callback cost more than the receiver)
        self._session = requests.Session()
        self._session.mount("http://", HTTPAdapter(pool_maxsize=DELIVERY_THREADS))
        self._session.trust_env = False  # callbacks go to 127.0.0.1: no proxy from the environment
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self.pending = 0
        self._tokens_lock = threading.Lock()
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}  # (URL, client ID): token, deadline

    def schedule(self, numbers: list[str], profile: str | None, config: SimulatorConfig) -> None:
        """One callback per number of a SOIP check (digits, as Kaleyra sends them), one request id."""
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        common = {"callback_profile_id": profile, "request_id": uuid.uuid4().hex, "timestamp": stamp}
        due = time.monotonic() + config.callback_delay
        numbers = numbers * (2 if config.callback_duplicates else 1)
        step = config.callback_spread / len(numbers)
        with self._idle:
            self.pending += len(numbers)
        for i, digits in enumerate(numbers):
            capable = soip_answer(digits)
            status = "capable" if capable else "not_capable"
            payload = {"number": digits, "soip_capable": capable, "status": status, **common}
            self._pool.submit(self._deliver, payload, config, due + i * step)

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self.pending, timeout)

    def stop(self) -> None:
        """Drop the callbacks not sent yet."""
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, payload: dict[str, Any], config: SimulatorConfig, due: float) -> None:
        try:
            if self._stopping.wait(max(0.0, due - time.monotonic())):
                return
            for attempt in range(config.callback_retries + 1):
                if attempt:
                    self._count("cb.retried")
                    time.sleep(min(0.05 * 2**attempt, 2.0))
                outcome = self._send(payload, config)
                if outcome != "retry":
                    break
            self._count("cb.sent" if outcome == "sent" else "cb.failed")
            if outcome != "sent":
                number, url = mask(payload["number"]), config.callback_url
                log.warning("Callback for %s to %s failed after %s attempts", number, url, attempt + 1)
        finally:
            with self._idle:
                self.pending -= 1
                self._idle.notify_all()

    def _send(self, payload: dict[str, Any], config: SimulatorConfig) -> str:
        """``sent``, ``retry``, or ``failed`` (a 4xx other than 408/429: retrying will not help)."""
        params, body, headers = render(payload, config)
        auth, url = config.callback_auth, config.callback_url or ""
        kind = auth.kind if auth else None
        tokens_at = config.callback_token_url or urllib.parse.urljoin(url, "token")  # beside .../callback
        try:
            if kind == "advanced":
                headers["Authorization"] = f"Bearer {self._token(tokens_at, auth)}"
            elif kind == "header":
                headers[auth.name] = auth.value
            basic = (auth.name, auth.value) if kind == "basic" else None
            method = config.callback_method
            response = self._session.request(
                method, url, params=params, data=body, headers=headers, auth=basic, timeout=TIMEOUT
            )
            response.close()
        except (requests.RequestException, ValueError, KeyError) as exc:
            log.debug("Callback delivery error: %s", type(exc).__name__)  # (a token error holds no token)
            return "retry"
        if response.ok:
            return "sent"
        log.debug("Callback answered HTTP %s", response.status_code)
        if kind == "advanced" and response.status_code == 401:  # expired or refused: a new token, then again
            with self._tokens_lock:
                self._tokens.pop((tokens_at, auth.name), None)
            return "retry"
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            return "failed"
        return "retry"

    def _token(self, url: str, auth: CallbackAuth) -> str:
        """The client's token from ``url``, fetched (and counted) when there is none or it expired."""
        with self._tokens_lock:
            token, deadline = self._tokens.get((url, auth.name), ("", 0.0))
            if time.monotonic() < deadline:
                return token
            creds, pair = {"client_id": auth.name, "client_secret": auth.value}, (auth.name, auth.value)
            sent = {"json": {"json": creds}, "form": {"data": creds}, "basic": {"auth": pair}}
            response = self._session.post(url, timeout=TIMEOUT, **sent[auth.token_request])
            response.raise_for_status()
            answer = response.json()
            token = str(answer["access_token"])
            self._tokens[(url, auth.name)] = (token, time.monotonic() + float(answer.get("expires_in") or 60))
            self._count("callback_tokens")
            return token
