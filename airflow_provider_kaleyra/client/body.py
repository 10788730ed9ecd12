"""Reading an answer's body within the call's deadline and memory cap."""

from __future__ import annotations

import contextlib
import heapq
import http.client
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
import urllib3

# A bulk answer for 500 numbers is a few tens of KB: a body beyond this is not an answer.
MAX_BODY_BYTES = 4 * 1024 * 1024
READ_PIECE = 64 * 1024
# Everything that means "no (whole) answer came back" (refused, reset, cut or corrupt, timed out);
# unreadable JSON is the same, caught where the body is decoded.
NO_ANSWER = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


class Unreadable(Exception):
    """No readable answer: the body was cut, corrupt, too big or too slow (always retryable)."""


class Watchdog:
    """Cuts reads still waiting at their deadline (urllib3's ``HTTPResponse.shutdown``): one thread for
    all of a transport's calls, sleeping until the earliest deadline (a timer per call cost a quarter of
    the transport's CPU)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._due: list[list[Any]] = []  # heap of [deadline, sequence, response or None]
        self._sequence = 0
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self, raw: Any, deadline: float) -> Iterator[None]:
        with self._lock:
            self._sequence += 1
            entry = [deadline, self._sequence, raw]
            heapq.heappush(self._due, entry)
            if self._thread is None or not self._thread.is_alive():  # (also after a fork)
                self._thread = threading.Thread(target=self._run, name="kaleyra-deadlines", daemon=True)
                self._thread.start()
            elif self._due[0] is entry:
                self._lock.notify()
        try:
            yield
        finally:
            with self._lock:  # once this returns, the response can never be cut
                entry[2] = None

    def _run(self) -> None:
        with self._lock:
            while self._due:
                deadline, _, raw = self._due[0]
                if raw is None:
                    heapq.heappop(self._due)
                elif (wait := deadline - time.monotonic()) > 0:
                    self._lock.wait(wait)
                else:
                    heapq.heappop(self._due)
                    _cut(raw)
            self._thread = None


def read_body(response: requests.Response, deadline: float, timeout: float, watchdog: Watchdog) -> bytes:
    """The decoded body, read piece by piece: refused past ``deadline`` (checked between reads; a read
    still waiting then is cut by ``watchdog``) or ``MAX_BODY_BYTES``."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Unreadable(f"an answer of {int(declared)} bytes, over the {MAX_BODY_BYTES}-byte cap")
    raw = response.raw
    plain = declared.isdigit() and not response.headers.get("Content-Encoding")
    pieces: list[bytes] = []
    size = 0
    with watchdog.watching(raw, deadline):
        while time.monotonic() < deadline:
            try:
                piece = raw.read1(READ_PIECE, decode_content=True)
            except NO_ANSWER:
                if time.monotonic() < deadline:
                    raise
                break
            if not piece:
                if time.monotonic() < deadline:
                    return b"".join(pieces)
                break  # (the end the watchdog made)
            size += len(piece)
            if size > MAX_BODY_BYTES:
                raise Unreadable(f"an answer over the {MAX_BODY_BYTES}-byte cap")
            pieces.append(piece)
            if plain and raw.length_remaining == 0:  # all the declared bytes are in: no more reads
                return b"".join(pieces)
    raise Unreadable(f"the answer took longer than the {timeout:g} s timeout")


def _cut(raw: Any) -> None:
    """Interrupt a read past its deadline (urllib3 2.3+; older ones keep the between-reads check)."""
    with contextlib.suppress(AttributeError, ValueError, RuntimeError, OSError):
        raw.shutdown()
