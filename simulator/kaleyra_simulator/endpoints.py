"""The API's behaviour: one request (method, path, headers, body) in, one answer (status, body, headers) out.

Decisions the Kaleyra documents leave open (see ``shared/kaleyra-api``):

* An unknown SID in the path answers **401**, like a wrong key: a configuration error retrying cannot fix.
* The bulk lookup, by default, **rejects** the whole request with 400 when any entry is not E.164-shaped,
  naming them (``bulk_invalid="drop"`` omits them). The 100..500 rule is checked after that and de-dup.
* A single lookup needs the ``+`` (raw or ``%2B``); a bare number is a 400.
* RCS error bodies carry a numeric ``code`` (the HTTP status); SOIP and simulator error bodies carry
  string codes, since Kaleyra uses both.
* ``truncated`` answers 200 with a correct ``Content-Length`` but only the first half of the JSON body,
  so the connection stays usable and the client sees bad JSON.
"""

from __future__ import annotations

import hmac
import json
import math
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from airflow_provider_kaleyra.client import api
from kaleyra_simulator import answers
from kaleyra_simulator.answers import E164_RE, SOIP_DIGITS_RE, bulk_fragment, json_bytes, rcs_error, str_error
from kaleyra_simulator.config import SimulatorConfig

if TYPE_CHECKING:
    from kaleyra_simulator.server import KaleyraSimulator

Answer = tuple[int, bytes, dict[str, str] | None]

# A request hits at most one of these (the first roll that succeeds, in this order)...
_EXCLUSIVE = ("reset", "error_5xx", "rate_429")
# ...and maybe these on top. The bulk faults are rolled by the bulk endpoint, once it has an answer.
_STACKING = ("slow", "truncated")


class Reset(Exception):
    """Raised to drop the connection without answering."""


class TokenBucket:
    """Requests per second with burst = rate, so an evenly paced client is never throttled."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = self._tokens = max(rate, 1.0)
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


def roll_faults(rng: random.Random, config: SimulatorConfig) -> set[str]:
    """This request's faults: at most one of reset/5xx/429, plus maybe slow and truncated.

    One seeded RNG for all handler threads, so a seed replays the same faults to a sequential client.
    """
    faults: set[str] = set()
    for kind in _EXCLUSIVE:
        if getattr(config, kind) and rng.random() < getattr(config, kind):
            faults.add(kind)
            break
    faults.update(
        kind for kind in _STACKING if getattr(config, kind) and rng.random() < getattr(config, kind)
    )
    return faults


def _path_regex(template: str) -> re.Pattern[str]:
    """Turn an ``api.py`` path template into a regex, so paths are never re-typed here."""
    pattern = re.escape(template).replace(re.escape("{sid}"), "(?P<sid>[^/]+)")
    return re.compile("^" + pattern.replace(re.escape("{number}"), "(?P<number>[^/]+)") + "/?$")


_ROUTES = (  # endpoint, path, the one method it allows
    ("rcs_bulk", _path_regex(api.RCS_BULK_PATH), "POST"),
    ("rcs_single", _path_regex(api.RCS_SINGLE_PATH), "GET"),
    ("soip_check", _path_regex(api.SOIP_CHECK_PATH), "POST"),
)


def answer(sim: KaleyraSimulator, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
    """Route one request; raises :class:`Reset` when a fault drops the connection."""
    config = sim.config  # one consistent snapshot for the whole request
    if path.startswith("/_sim/"):
        sim._count("req.sim")
        return (*_control(sim, method, path, body), None)
    for endpoint, regex, allowed in _ROUTES:  # noqa: B007 - used after the break
        match = regex.match(path)
        if match:
            break
    else:
        sim._count("req.unknown")
        return (*str_error(404, "404", "Not Found", {"path": path}), None)
    sim._count(f"req.{endpoint}")
    is_rcs = endpoint != "soip_check"
    if method != allowed:
        return (*str_error(405, "405", "Method Not Allowed", {"allowed": allowed}), {"Allow": allowed})
    if config.latency:
        time.sleep(config.latency)
    wait = sim._bucket.take() if sim._bucket is not None else 0.0
    if wait:
        return _too_many(sim, config, wait)

    faults = roll_faults(sim._rng, config)
    for kind in faults - {"truncated"}:  # truncated is counted only when it hits a 200
        sim._count(f"fault.{kind}")
    if "reset" in faults:
        raise Reset
    if "error_5xx" in faults:
        status = sim._rng.choice((500, 502, 503, 504))
        message = "Temporal error, try again later" if status == 503 else HTTPStatus(status).phrase
        return (*(rcs_error(status, message) if is_rcs else str_error(status, str(status), message)), None)
    if "rate_429" in faults:
        return _too_many(sim, config, 1.0)
    if "slow" in faults:
        time.sleep(config.slow_seconds)

    error = _check_auth(sim, config, headers, match.group("sid"), is_rcs)
    if error is not None:
        status, payload = error
    elif endpoint == "rcs_single":
        status, payload = _rcs_single(sim, match.group("number"))
    elif endpoint == "rcs_bulk":
        status, payload = _rcs_bulk(sim, config, body)
    else:
        status, payload = _soip(sim, config, headers.get("Content-Type") or "", body)
    if status == 200 and "truncated" in faults:
        sim._count("fault.truncated")
        payload = payload[: max(1, len(payload) // 2)]
    return status, payload, None


def _too_many(sim: KaleyraSimulator, config: SimulatorConfig, wait: float) -> Answer:
    sim._count("rate_limited")
    headers = {"Retry-After": str(max(1, math.ceil(wait)))} if config.retry_after else None
    return (*str_error(429, "429", "Throttling", {"error": "Too many requests"}, data={}), headers)


def _check_auth(
    sim: KaleyraSimulator, config: SimulatorConfig, headers: Mapping[str, str], sid: str, is_rcs: bool
) -> tuple[int, bytes] | None:
    key = headers.get(api.API_KEY_HEADER)
    if not key or not hmac.compare_digest(key.encode(), config.api_key.encode()):
        problem = "Invalid or missing API key"
    elif urllib.parse.unquote(sid) != config.sid:
        problem = "Unknown account SID"
    elif is_rcs and config.rcs_disabled:
        problem = "RCS channel is not configured for this account"
    else:
        return None
    sim._count("auth_failures")
    return rcs_error(401, problem) if is_rcs else str_error(401, "RBC201", problem)


def _rcs_single(sim: KaleyraSimulator, raw: str) -> tuple[int, bytes]:
    number = urllib.parse.unquote(raw)
    if not E164_RE.match(number):
        return rcs_error(400, "Invalid device address", {"deviceAddress": "must be E.164 with a leading +"})
    device = answers.rcs_answer(number)
    device["deviceAddress"] = device["deviceAddress"][1:]  # Kaleyra's single sample drops the +
    sim._count("numbers.rcs")
    return 200, json_bytes(
        {"code": "RCS702", "message": "Device Lookup successful", "data": device, "error": {}}
    )


def _rcs_bulk(sim: KaleyraSimulator, config: SimulatorConfig, body: bytes) -> tuple[int, bytes]:
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
        return rcs_error(
            400, "Invalid device addresses", {"invalid": invalid[:20], "invalid_count": len(invalid)}
        )
    if not api.BULK_MIN <= len(unique) <= api.BULK_MAX:
        return rcs_error(
            400,
            f"deviceAddresses must hold {api.BULK_MIN} to {api.BULK_MAX} distinct valid E.164 numbers",
            {"count": len(unique), "min": api.BULK_MIN, "max": api.BULK_MAX},
        )
    fragments = list(unique.values())
    sim._count("numbers.rcs", len(fragments))
    rng = sim._rng
    if config.bulk_missing and rng.random() < config.bulk_missing:
        sim._count("fault.bulk_missing")
        for index in sorted(rng.sample(range(len(fragments)), max(1, len(fragments) // 20)), reverse=True):
            del fragments[index]
    if config.bulk_extra and rng.random() < config.bulk_extra:
        sim._count("fault.bulk_extra")
        extras = ("+1999" + str(rng.randint(1000000, 9999999)) for _ in range(3))
        fragments += [bulk_fragment(extra) or "" for extra in extras if extra not in unique]
    return 200, ('{"devices":[' + ",".join(fragments) + "]}").encode()


def _soip(
    sim: KaleyraSimulator, config: SimulatorConfig, content_type: str, body: bytes
) -> tuple[int, bytes]:
    numbers, profile, error = _soip_numbers(body, content_type.lower())
    if error:
        return str_error(400, "RBC529", "Invalid input or validation error!", {"error": error})
    sim._count("numbers.soip", len(numbers))
    if config.callback_url:
        sim._callbacks.schedule(numbers, profile, config)
    accepted = {"code": "MSG402", "message": "Request Successfully Processed", "data": [], "error": {}}
    return 202, json_bytes(accepted)


def _soip_numbers(body: bytes, content_type: str) -> tuple[list[str], str | None, str | None]:
    """Numbers (digits, de-duplicated), callback profile id, and an error reason or None.

    Tolerant on purpose: Kaleyra's own sample sends JSON-looking text as form data.
    """
    text = body.decode("utf-8", errors="replace").strip()
    try:
        if "json" in content_type or text.startswith("{"):
            payload: Any = json.loads(text)
        else:
            form = urllib.parse.parse_qs(text, keep_blank_values=True)  # repeated or name[]: a list
            payload = {
                k.removesuffix("[]"): v if len(v) > 1 or k.endswith("[]") else v[0] for k, v in form.items()
            }
    except ValueError:
        return [], None, "body is not valid JSON"
    if not isinstance(payload, dict):
        return [], None, "body must be a JSON object or form fields"
    raw, profile = payload.get("number"), payload.get("callback_profile_id")
    profile = None if profile in (None, "") else str(profile)
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        return [], profile, "number is required (a string, comma-separated string or list)"
    items = [part for item in raw for part in (item.split(",") if isinstance(item, str) else [item])]
    numbers: dict[str, None] = {}
    bad: list[str] = []
    for item in items:
        digits = api.soip_number(item.strip()) if isinstance(item, str) else str(item)
        if SOIP_DIGITS_RE.match(digits):
            numbers[digits] = None
        else:
            bad.append(str(item))
    if bad:
        return [], profile, f"invalid number(s): {', '.join(bad[:10])}"
    return (list(numbers), profile, None) if numbers else ([], profile, "number is empty")


def _control(sim: KaleyraSimulator, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    if path == "/_sim/stats" and method == "GET":
        return 200, json_bytes(sim.stats())
    if path == "/_sim/reset" and method == "POST":
        sim.reset_stats()
        return 200, json_bytes({"reset": True})
    if path == "/_sim/config" and method == "POST":
        try:
            changes = json.loads(body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("config changes must be a JSON object")
            sim.configure(**changes)
        except (TypeError, ValueError) as exc:
            return str_error(400, "SIM400", "Bad simulator config", {"error": str(exc)})
    if path == "/_sim/config" and method in ("GET", "POST"):
        return 200, json_bytes(sim.config.public())
    return str_error(404, "404", "Not Found", {"path": path})
