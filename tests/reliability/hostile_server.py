"""A Kaleyra impostor that misbehaves on purpose: raw sockets on 127.0.0.1, one scripted answer per request.

The simulator answers like Kaleyra, with faults drawn at random; this server answers exactly as a
test scripts it, down to the bytes on the wire: a connection reset in the middle of a body, a body
that claims gzip, a byte every half second, a hundred megabytes. ``HostileServer(a, b, c)`` plays
``a`` to the first request, ``b`` to the second, and ``c`` to every request after that; it keeps
every request it got (``requests``) and how many body bytes it managed to send (``bytes_sent``).

Every behaviour is a function ``(connection, request) -> None`` that writes the answer; the
connection is closed afterwards (each answer says ``Connection: close``).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple


class Request(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.monotonic()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def numbers(self) -> list[str]:
        """The numbers a bulk lookup asked for."""
        return list(self.json()["deviceAddresses"])


Behaviour = Callable[["Connection", Request], None]


class Connection:
    """One accepted socket, with the few ways of writing to it the behaviours need."""

    def __init__(self, sock: socket.socket, server: HostileServer) -> None:
        self.sock = sock
        self.server = server

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_body(self, data: bytes) -> None:
        self.sock.sendall(data)
        with self.server.lock:
            self.server.bytes_sent += len(data)

    def head(self, status: int = 200, headers: dict[str, str] | None = None, reason: str = "OK") -> None:
        lines = [f"HTTP/1.1 {status} {reason}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def reset(self) -> None:
        """Close with an RST, not a FIN: what a crashed proxy or a dropped route looks like."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    @property
    def stopping(self) -> bool:
        return self.server.stopped.is_set()


# -- behaviours ----------------------------------------------------------------------------


def reply(
    body: Any = b"",
    status: int = 200,
    headers: dict[str, str] | None = None,
    reason: str = "OK",
) -> Behaviour:
    """A whole answer with a ``Content-Length``; ``body`` bytes as they are, anything else as JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    def behave(conn: Connection, request: Request) -> None:
        conn.head(
            status,
            {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})},
            reason,
        )
        conn.send_body(data)

    return behave


def bulk_answer(device: Callable[[int, str], dict[str, Any] | None] | None = None) -> Behaviour:
    """A 200 bulk answer built from the asked numbers: ``device(i, "+1...")`` per number (``None``: left out)."""

    def default(i: int, number: str) -> dict[str, Any]:
        return {
            "deviceAddress": number.lstrip("+"),
            "carrierId": "Google",
            "carrierStatus": "ACTIVE",
            "rcsEnabled": i % 2 == 0,
        }

    make = device or default

    def behave(conn: Connection, request: Request) -> None:
        if request.method == "GET":  # a single lookup: the number is the path's tail
            number = "+" + request.path.rsplit("/", 1)[1].replace("%2B", "").lstrip("+")
            reply({"code": "RCS200", "data": make(0, number)})(conn, request)
            return
        devices = [d for i, n in enumerate(request.numbers) if (d := make(i, n)) is not None]
        reply({"code": "RCS200", "devices": devices})(conn, request)

    return behave


def reset_mid_body(chunked: bool = False) -> Behaviour:
    """Headers promise a body (by length or chunked); part of it comes, then the connection is reset."""

    def behave(conn: Connection, request: Request) -> None:
        start = (
            b'{"code": "RCS200", "devices": ['
            + b'{"deviceAddress": "14155550100", "rcsEnabled": true}, ' * 40
        )
        if chunked:
            conn.head(200, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
            conn.send_body(b"%x\r\n%s\r\n" % (len(start), start))
        else:
            conn.head(200, {"Content-Type": "application/json", "Content-Length": str(len(start) * 4)})
            conn.send_body(start)
        time.sleep(0.05)  # (let the client read what came before the reset)
        conn.reset()

    return behave


def corrupt_gzip() -> Behaviour:
    """A body that says ``Content-Encoding: gzip`` and starts like gzip, but is not."""
    return reply(
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"this is not deflate" * 20,
        headers={"Content-Encoding": "gzip"},
    )


def nested(depth: int = 100_000) -> Behaviour:
    """Valid JSON, nested deeper than any parser's recursion limit."""
    return reply(b'{"devices": ' + b"[" * depth + b"]" * depth + b"}")


def throttle(retry_after: str | None) -> Behaviour:
    """429, with ``Retry-After: <retry_after>`` (any text at all) or without the header."""
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return reply(
        {"code": "RCS429", "message": "Throttling"}, status=429, headers=headers, reason="Too Many Requests"
    )


def drip(interval: float = 0.5) -> Behaviour:
    """Headers at once, then the body one byte every ``interval`` seconds: no read ever times out."""

    def behave(conn: Connection, request: Request) -> None:
        body = b'{"devices": []}' + b" " * 10_000
        conn.head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))})
        for byte in body:
            if conn.stopping:
                return
            conn.send_body(bytes([byte]))
            time.sleep(interval)

    return behave


def huge(size: int = 100 * 1024 * 1024, declare: bool = True) -> Behaviour:
    """A 200 body of ``size`` bytes (JSON text, as if an answer), with a ``Content-Length`` or chunked."""

    def behave(conn: Connection, request: Request) -> None:
        block = b" " * 65536
        if declare:
            conn.head(200, {"Content-Type": "application/json", "Content-Length": str(size)})
        else:
            conn.head(200, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        sent = 0
        while sent < size and not conn.stopping:
            conn.send_body(block if declare else b"%x\r\n%s\r\n" % (len(block), block))
            sent += len(block)
        if not declare:
            conn.send(b"0\r\n\r\n")

    return behave


def raw(data: bytes) -> Behaviour:
    """Exactly these bytes, whatever they are (a broken status line, a lying header), then close."""

    def behave(conn: Connection, request: Request) -> None:
        conn.send_body(data)

    return behave


def empty() -> Behaviour:
    """``200 OK`` with nothing in it."""
    return reply(b"")


# -- the server ----------------------------------------------------------------------------


class HostileServer:
    """Plays its behaviours in order to the requests it gets (the last one to all later requests)."""

    def __init__(self, *behaviours: Behaviour) -> None:
        if not behaviours:
            raise ValueError("a HostileServer needs at least one behaviour")
        self.behaviours = list(behaviours)
        self.requests: list[Request] = []
        self.bytes_sent = 0
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []

    def start(self) -> HostileServer:
        accept = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def stop(self) -> None:
        self.stopped.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def count(self) -> int:
        return len(self.requests)

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(worker)
            worker.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        try:
            request = _read_request(sock)
            if request is None:
                return
            with self.lock:
                index = len(self.requests)
                self.requests.append(request)
            behaviour = self.behaviours[min(index, len(self.behaviours) - 1)]
            behaviour(Connection(sock, self), request)
        except OSError:  # the client gave up (as it should, often): nothing to do
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass


def _read_request(sock: socket.socket) -> Request | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Request(method, path, headers, body, time.monotonic())
