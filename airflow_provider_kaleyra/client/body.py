"""Reading an answer's body within the call's deadline and memory cap."""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from typing import Any

import requests
import urllib3

# A bulk answer for 500 numbers is a few tens of KB: a body beyond this is not an answer.
MAX_BODY_BYTES = 4 * 1024 * 1024
READ_PIECE = 64 * 1024
# Everything that means "no (whole) answer came back": requests' and urllib3's errors (refused,
# reset, cut or corrupt bodies, timeouts), http.client's and the socket's. JSON that cannot be
# read or is nested too deep is the same, caught where the body is decoded.
NO_ANSWER = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


class Unreadable(Exception):
    """No readable answer: the body was cut, corrupt, too big or too slow (always retryable)."""


def read_body(response: requests.Response, deadline: float, timeout: float) -> bytes:
    """The decoded body, read piece by piece: refused past ``deadline`` or ``MAX_BODY_BYTES``.

    The deadline is checked between reads; a read still waiting at the deadline (a body that
    dripped until then and stalled) is cut by a timer calling urllib3's public
    ``HTTPResponse.shutdown``, made to interrupt a read from another thread. The timer starts
    only when a body takes more than one read, so most answers never start one.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Unreadable(f"an answer of {int(declared)} bytes, over the {MAX_BODY_BYTES}-byte cap")
    raw = response.raw
    plain = declared.isdigit() and not response.headers.get("Content-Encoding")
    pieces: list[bytes] = []
    size = 0
    watchdog: threading.Timer | None = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unreadable(f"the answer took longer than the {timeout:g} s timeout")
            if pieces and watchdog is None:
                watchdog = threading.Timer(remaining, _cut, (raw,))
                watchdog.daemon = True
                watchdog.start()
            try:
                piece = raw.read1(READ_PIECE, decode_content=True)
            except NO_ANSWER:
                if time.monotonic() >= deadline:
                    raise Unreadable(f"the answer took longer than the {timeout:g} s timeout") from None
                raise
            if not piece:
                if time.monotonic() >= deadline:  # (the end the watchdog made)
                    raise Unreadable(f"the answer took longer than the {timeout:g} s timeout")
                return b"".join(pieces)
            size += len(piece)
            if size > MAX_BODY_BYTES:
                raise Unreadable(f"an answer over the {MAX_BODY_BYTES}-byte cap")
            pieces.append(piece)
            if plain and raw.length_remaining == 0:  # all the declared bytes are in: no more reads
                return b"".join(pieces)
    finally:
        if watchdog is not None:
            watchdog.cancel()


def _cut(raw: Any) -> None:
    """Interrupt a read past its deadline (urllib3 2.3+; older ones keep the between-reads check)."""
    with contextlib.suppress(AttributeError, ValueError, RuntimeError, OSError):
        raw.shutdown()
