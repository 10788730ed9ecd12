"""HTTP plumbing, counters and :class:`KaleyraSimulator` (what a request is answered: :mod:`.answers`): the
provider is tested and benchmarked over real HTTP (pooling, throttling, failures) without Kaleyra."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import socket
import struct
import threading
import urllib.parse
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kaleyra_simulator.answers import TokenBucket, answer, str_error
from kaleyra_simulator.callbacks import CallbackDispatcher
from kaleyra_simulator.config import FAULT_KINDS, SimulatorConfig, simulator_connection

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024


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
