"""A local, deterministic stand-in for the Kaleyra RCS and SOIP capability-check APIs.

Why: the provider must be tested (and benchmarked) against real HTTP, with real
connection pooling, throttling and failures, without touching Kaleyra. One server
answers both RCS and SOIP paths, so one base URL serves both connection extras.

This module is the HTTP plumbing and the public :class:`KaleyraSimulator`; what each
request is answered is :mod:`.endpoints`, the answers themselves :mod:`.answers`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import struct
import sys
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kaleyra_simulator.answers import str_error
from kaleyra_simulator.callbacks import CallbackDispatcher
from kaleyra_simulator.config import SimulatorConfig, simulator_connection
from kaleyra_simulator.endpoints import Reset, answer
from kaleyra_simulator.faults import Dice, TokenBucket
from kaleyra_simulator.stats import Stats

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "KaleyraSimulator"
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are closed after this
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

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

    def _dispatch(self) -> None:
        method, sim = self.command, self.server.sim
        config = sim.config  # one consistent snapshot for the whole request
        path = urllib.parse.urlsplit(self.path).path
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(*str_error(413, "413", "Request body too large or malformed"))
            return
        try:
            status, payload, headers = answer(sim, config, method, path, self.headers, body)
        except Reset:
            self._reset_connection()
            return
        except Exception:  # the simulator must never hang a client on its own bug
            log.exception("Simulator error on %s %s", method, path)
            status, payload, headers = (*str_error(500, "SIM500", "Simulator internal error"), None)
        self._send(status, payload, headers)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


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


class KaleyraSimulator:
    """A running simulator: ``with KaleyraSimulator(SimulatorConfig()) as sim: requests.get(sim.url + ...)``."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._config = config or SimulatorConfig()
        self._stats = Stats()
        self._dice = Dice(self._config.seed)
        self._bucket = TokenBucket(self._config.rate_limit) if self._config.rate_limit else None
        self._config_lock = threading.Lock()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._callbacks: CallbackDispatcher | None = None

    # -- lifecycle

    def start(self) -> KaleyraSimulator:
        """Bind (port 0 = a free port) and serve from a background thread."""
        if self._server is not None:
            return self
        self._server = _HTTPServer((self._config.host, self._config.port), self)
        self._callbacks = CallbackDispatcher(self._stats)
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
    def url(self) -> str:
        """Base URL for both ``rcs_base_url`` and ``soip_base_url``."""
        if self._server is None:
            raise RuntimeError("simulator is not running")
        return f"http://{self._config.host}:{self._server.server_address[1]}"

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
                self._dice.reseed(new.seed)
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
