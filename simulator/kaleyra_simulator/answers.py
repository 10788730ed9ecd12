"""What the simulator answers: per number, pure functions of its digits (blake2b, stable across processes:
tests and benchmarks compute the expected result of any lookup without asking); per request, :func:`answer`.
Where Kaleyra's docs (``shared/kaleyra-api``) leave it open: an unknown SID is a 401 like a wrong key; a bulk
lookup with entries not E.164-shaped is a 400 naming them (``bulk_invalid="drop"`` omits them), the 100..500
rule counting after that and de-dup; a single lookup needs the ``+`` (raw or ``%2B``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import re
import threading
import time
import urllib.parse
from email.message import Message
from functools import lru_cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from airflow_provider_kaleyra.callbacks.bodies import form_fields
from airflow_provider_kaleyra.client import api
from kaleyra_simulator.config import SimulatorConfig

if TYPE_CHECKING:
    from kaleyra_simulator.server import KaleyraSimulator

Answer = tuple[int, bytes]  # status, body (JSON)
Reply = Answer | tuple[int, bytes, dict[str, str]]  # and extra headers

# Cheap shape check only: full validation is the client's job, and parsing would cap the throughput.
E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")

CARRIERS = ("AT&T", "T-Mobile", "Verizon", "Google")
CARRIER_STATUSES = ("ACTIVE", "INACTIVE", "UNKNOWN")


def _digest(digits: str, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(digits.encode(), digest_size=8, person=person).digest(), "big")


def rcs_answer(e164: str) -> dict[str, Any]:
    """The device record of a number, as in a bulk answer (the single lookup drops the ``+``)."""
    number = "+" + e164.strip().lstrip("+")
    h = _digest(number[1:], b"kaleyra-rcs")
    carrier, bucket = CARRIERS[h % len(CARRIERS)], (h >> 8) % 100
    status = "ACTIVE" if bucket < 80 else "INACTIVE" if bucket < 90 else "UNKNOWN"
    # Only active lines can be RCS-enabled: 80% active x 75% = ~60% enabled overall.
    enabled = status == "ACTIVE" and (h >> 16) % 100 < 75
    return {"deviceAddress": number, "carrierId": carrier, "carrierStatus": status, "rcsEnabled": enabled}


def soip_answer(e164: str) -> bool:
    """Whether the simulator reports the number as SMS-over-IP capable (~60%, stable hash)."""
    return _digest(e164.strip().lstrip("+"), b"kaleyra-soip") % 100 < 60


@lru_cache(maxsize=1 << 18)
def bulk_fragment(address: str) -> str | None:
    """Pre-serialised JSON of one bulk device, or None when ``address`` is not E.164-shaped. Cached: a bulk
    answer is 500 of these, the same numbers come back in benchmarks, and the server must do >1,000 req/s."""
    return json.dumps(rcs_answer(address), separators=(",", ":")) if E164_RE.match(address) else None


clear_caches = bulk_fragment.cache_clear  # forget the cached answers (a test changing rcs_answer, say)


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def rcs_error(status: int, message: str, detail: dict[str, Any] | None = None) -> Answer:
    """An RCS error body: numeric ``code`` (the HTTP status)."""
    body = {"code": status, "message": message, "data": {}}
    return status, json_bytes({**body, "error": detail or {"message": message}})


def str_error(
    status: int, code: str, message: str, detail: dict[str, Any] | None = None, data: Any = None
) -> Answer:
    """A SOIP or simulator error body: string ``code``, since Kaleyra uses both forms."""
    body = {"code": code, "message": message, "data": [] if data is None else data}
    return status, json_bytes({**body, "error": detail or {"error": message}})


class TokenBucket:
    """Requests per second with burst = rate: an evenly paced client is never throttled. No rate, no limit."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate or 0.0
        self.capacity = self._tokens = max(self.rate, 1.0)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take one token: 0.0 when allowed, else the seconds to wait for the next token."""
        if not self.rate:
            return 0.0
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate


def roll_faults(rng: random.Random, config: SimulatorConfig) -> set[str]:
    """This request's faults: at most one of reset/5xx/429 (the first roll that hits, in this order), plus
    maybe slow and truncated. The bulk faults are rolled by the bulk endpoint, once it has an answer."""

    def hits(kind: str) -> bool:
        return getattr(config, kind) > 0 and rng.random() < getattr(config, kind)

    first = next((kind for kind in ("reset", "error_5xx", "rate_429") if hits(kind)), None)
    return {kind for kind in ("slow", "truncated") if hits(kind)} | ({first} if first else set())


_SEGMENTS = {"sid": "(?P<sid>[^/]+)", "number": "(?P<number>[^/]+)"}
_ROUTES = (  # endpoint, path (api.py's templates: never re-typed here), the one method it allows
    ("rcs_bulk", re.compile(f"^{api.RCS_BULK_PATH.format(**_SEGMENTS)}/?$"), "POST"),
    ("rcs_single", re.compile(f"^{api.RCS_SINGLE_PATH.format(**_SEGMENTS)}/?$"), "GET"),
    ("soip_check", re.compile(f"^{api.SOIP_CHECK_PATH.format(**_SEGMENTS)}/?$"), "POST"),
)


def answer(sim: KaleyraSimulator, method: str, path: str, headers: Message, body: bytes) -> Reply | None:
    """Route one request; None when the reset fault drops the connection."""
    config = sim.config  # one consistent snapshot for the whole request
    if path.startswith("/_sim/"):
        sim._count("req.sim")
        return _control(sim, method, path, body)
    routes = ((name, m, allowed) for name, regex, allowed in _ROUTES if (m := regex.match(path)))
    endpoint, match, allowed = next(routes, ("unknown", None, ""))
    sim._count(f"req.{endpoint}")
    if match is None:
        return str_error(404, "404", "Not Found", {"path": path})
    if method != allowed:
        return (*str_error(405, "405", "Method Not Allowed", {"allowed": allowed}), {"Allow": allowed})
    if config.latency:
        time.sleep(config.latency)
    wait = sim._bucket.take()
    faults = roll_faults(sim._rng, config) if not wait else set()
    for kind in faults - {"truncated"}:  # truncated is counted only when it hits a 200
        sim._count(f"fault.{kind}")
    if wait or "rate_429" in faults:
        sim._count("rate_limited")
        retry_after = {"Retry-After": str(max(1, math.ceil(wait or 1.0)))} if config.retry_after else {}
        return (*str_error(429, "429", "Throttling", {"error": "Too many requests"}, data={}), retry_after)
    if "reset" in faults:
        return None
    is_rcs = endpoint != "soip_check"
    if "error_5xx" in faults:
        status = sim._rng.choice((500, 502, 503, 504))
        message = "Temporal error, try again later" if status == 503 else HTTPStatus(status).phrase
        return rcs_error(status, message) if is_rcs else str_error(status, str(status), message)
    if "slow" in faults:
        time.sleep(config.slow_seconds)
    problem = _auth_problem(config, headers.get(api.API_KEY_HEADER), match.group("sid"), is_rcs)
    if problem:
        sim._count("auth_failures")
        status, payload = rcs_error(401, problem) if is_rcs else str_error(401, "RBC201", problem)
    elif endpoint == "rcs_single":
        status, payload = _rcs_single(sim, match.group("number"))
    elif endpoint == "rcs_bulk":
        # (bulk faults only on answers that arrive whole: counted faults are faults the client saw)
        status, payload = _rcs_bulk(sim, config, body, bulk_faults=not faults & {"slow", "truncated"})
    else:
        status, payload = _soip(sim, config, (headers.get("Content-Type") or "").lower(), body)
    if status == 200 and "truncated" in faults:
        sim._count("fault.truncated")
        payload = payload[: max(1, len(payload) // 2)]
    return status, payload


def _auth_problem(config: SimulatorConfig, key: str | None, sid: str, is_rcs: bool) -> str | None:
    if not key or not hmac.compare_digest(key.encode(), config.api_key.encode()):
        return "Invalid or missing API key"
    if urllib.parse.unquote(sid) != config.sid:
        return "Unknown account SID"
    if is_rcs and config.rcs_disabled:
        return "RCS channel is not configured for this account"
    return None


def _rcs_single(sim: KaleyraSimulator, raw: str) -> Answer:
    number = urllib.parse.unquote(raw)
    if not E164_RE.match(number):
        return rcs_error(400, "Invalid device address", {"deviceAddress": "must be E.164 with a leading +"})
    device = {**rcs_answer(number), "deviceAddress": number[1:]}  # Kaleyra's single sample drops the +
    sim._count("numbers.rcs")
    found = {"code": "RCS702", "message": "Device Lookup successful", "data": device, "error": {}}
    return 200, json_bytes(found)


def _rcs_bulk(sim: KaleyraSimulator, config: SimulatorConfig, body: bytes, bulk_faults: bool) -> Answer:
    try:
        request = json.loads(body)
    except ValueError:
        return rcs_error(400, "Request body must be JSON")
    addresses = request.get("deviceAddresses") if isinstance(request, dict) else None
    if not isinstance(addresses, list):
        return rcs_error(400, "deviceAddresses must be an array of strings")
    unique: dict[str, str] = {}
    invalid: list[str] = []
    for address in addresses:
        fragment = bulk_fragment(address) if isinstance(address, str) else None
        if fragment is None:
            invalid.append(str(address))
        elif address not in unique:
            unique[address] = fragment
    if invalid and config.bulk_invalid == "reject":
        detail = {"invalid": invalid[:20], "invalid_count": len(invalid)}
        return rcs_error(400, "Invalid device addresses", detail)
    if not api.BULK_MIN <= len(unique) <= api.BULK_MAX:
        detail = {"count": len(unique), "min": api.BULK_MIN, "max": api.BULK_MAX}
        rule = f"deviceAddresses must hold {api.BULK_MIN} to {api.BULK_MAX} distinct valid E.164 numbers"
        return rcs_error(400, rule, detail)
    fragments = list(unique.values())
    sim._count("numbers.rcs", len(fragments))
    rng = sim._rng
    if bulk_faults and config.bulk_missing and rng.random() < config.bulk_missing:
        sim._count("fault.bulk_missing")
        for index in sorted(rng.sample(range(len(fragments)), max(1, len(fragments) // 20)), reverse=True):
            del fragments[index]
    if bulk_faults and config.bulk_extra and rng.random() < config.bulk_extra:
        sim._count("fault.bulk_extra")
        extras = ("+1999" + str(rng.randint(1000000, 9999999)) for _ in range(3))
        fragments += [bulk_fragment(extra) or "" for extra in extras if extra not in unique]
    return 200, ('{"devices":[' + ",".join(fragments) + "]}").encode()


def _soip(sim: KaleyraSimulator, config: SimulatorConfig, content_type: str, body: bytes) -> Answer:
    """Numbers as digits, de-duplicated. Tolerant on purpose: Kaleyra's own sample sends JSON-looking text
    as form data."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text) if "json" in content_type or text.startswith("{") else form_fields(text)
    except ValueError:
        return _soip_bad("body is not valid JSON")
    raw = payload.get("number") if isinstance(payload, dict) else None
    if not isinstance(raw, str | list):
        return _soip_bad("number is required (a string, comma-separated string or list) in an object or form")
    numbers: dict[str, None] = {}
    bad: list[str] = []
    for item in [raw] if isinstance(raw, str) else raw:
        for part in item.split(",") if isinstance(item, str) else [item]:
            digits = api.soip_number(part.strip()) if isinstance(part, str) else str(part)
            if E164_RE.match("+" + digits):
                numbers[digits] = None
            else:
                bad.append(str(part))
    if bad or not numbers:
        return _soip_bad(f"invalid number(s): {', '.join(bad[:10])}" if bad else "number is empty")
    sim._count("numbers.soip", len(numbers))
    if config.callback_url:
        profile = payload.get("callback_profile_id")
        sim._callbacks.schedule(list(numbers), None if profile in (None, "") else str(profile), config)
    accepted = {"code": "MSG402", "message": "Request Successfully Processed", "data": [], "error": {}}
    return 202, json_bytes(accepted)


def _soip_bad(reason: str) -> Answer:
    return str_error(400, "RBC529", "Invalid input or validation error!", {"error": reason})


def _control(sim: KaleyraSimulator, method: str, path: str, body: bytes) -> Answer:
    if path == "/_sim/stats" and method == "GET":
        return 200, json_bytes(sim.stats())
    if path == "/_sim/reset" and method == "POST":
        sim.reset_stats()
        return 200, json_bytes({"reset": True})
    if path == "/_sim/config" and method == "POST":
        try:
            sim.configure(**json.loads(body or b"{}"))  # not an object: a TypeError
        except (TypeError, ValueError) as exc:
            return str_error(400, "SIM400", "Bad simulator config", {"error": str(exc)})
    if path == "/_sim/config" and method in ("GET", "POST"):
        return 200, json_bytes(sim.config.public())
    return str_error(404, "404", "Not Found", {"path": path})
