"""What the simulator answers: pure functions of the number (blake2b of its digits), stable across
processes, so tests and benchmarks compute the expected result of any lookup without asking; and the bodies.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from typing import Any

# Cheap shape check only: full validation is the client's job, and parsing would cap the throughput.
E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")

CARRIERS = ("AT&T", "T-Mobile", "Verizon", "Google")
CARRIER_STATUSES = ("ACTIVE", "INACTIVE", "UNKNOWN")


def _digest(digits: str, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(digits.encode(), digest_size=8, person=person).digest(), "big")


def rcs_answer(e164: str) -> dict[str, Any]:
    """The device record of a number, as in a bulk answer (the single lookup drops the ``+``)."""
    digits = e164.strip().lstrip("+")
    h = _digest(digits, b"kaleyra-rcs")
    carrier, bucket = CARRIERS[h % len(CARRIERS)], (h >> 8) % 100
    status = "ACTIVE" if bucket < 80 else "INACTIVE" if bucket < 90 else "UNKNOWN"
    # Only active lines can be RCS-enabled: 80% active x 75% = ~60% enabled overall.
    enabled = status == "ACTIVE" and (h >> 16) % 100 < 75
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
def bulk_fragment(address: str) -> str | None:
    """Pre-serialised JSON of one bulk device, or None when ``address`` is not E.164-shaped. Cached: a bulk
    answer is 500 of these, the same numbers come back in benchmarks, and the server must do >1,000 req/s."""
    if not isinstance(address, str) or not E164_RE.match(address):
        return None
    return json.dumps(rcs_answer(address), separators=(",", ":"))


clear_caches = bulk_fragment.cache_clear  # forget the cached answers (a test changing rcs_answer, say)


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def rcs_error(status: int, message: str, detail: dict[str, Any] | None = None) -> tuple[int, bytes]:
    """An RCS error body: numeric ``code`` (the HTTP status)."""
    body = {"code": status, "message": message, "data": {}}
    return status, json_bytes({**body, "error": detail or {"message": message}})


def str_error(
    status: int, code: str, message: str, detail: dict[str, Any] | None = None, data: Any = None
) -> tuple[int, bytes]:
    """A SOIP or simulator error body: string ``code``, since Kaleyra uses both forms."""
    body = {"code": code, "message": message, "data": [] if data is None else data}
    return status, json_bytes({**body, "error": detail or {"error": message}})
