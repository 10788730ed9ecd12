"""The API's behaviour: one request (method, path, headers, body) in, one answer (status, body, headers) out.

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

import hmac
import json
import math
import re
import time
import urllib.parse
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from airflow_provider_kaleyra.client.api import (
    API_KEY_HEADER,
    BULK_MAX,
    BULK_MIN,
    RCS_BULK_PATH,
    RCS_SINGLE_PATH,
    SOIP_CHECK_PATH,
    soip_number,
)
from kaleyra_simulator.answers import (
    E164_RE,
    RCS_OK_CODE,
    RCS_OK_MESSAGE,
    SOIP_DIGITS_RE,
    SOIP_OK_CODE,
    SOIP_OK_MESSAGE,
    bulk_fragment,
    json_bytes,
    rcs_answer,
    rcs_error,
    soip_bad,
    str_error,
)
from kaleyra_simulator.callbacks import callback_payloads
from kaleyra_simulator.config import SimulatorConfig

if TYPE_CHECKING:
    from kaleyra_simulator.server import KaleyraSimulator

Answer = tuple[int, bytes, dict[str, str] | None]


class Reset(Exception):
    """Raised to drop the connection without answering."""


def _path_regex(template: str) -> re.Pattern[str]:
    """Turn an ``api.py`` path template into a regex, so paths are never re-typed here."""
    pattern = re.escape(template).replace(re.escape("{sid}"), "(?P<sid>[^/]+)")
    pattern = pattern.replace(re.escape("{number}"), "(?P<number>[^/]+)")
    return re.compile(f"^{pattern}/?$")


_ROUTES = (  # endpoint, path, the one method it allows
    ("rcs_bulk", _path_regex(RCS_BULK_PATH), "POST"),
    ("rcs_single", _path_regex(RCS_SINGLE_PATH), "GET"),
    ("soip_check", _path_regex(SOIP_CHECK_PATH), "POST"),
)


def answer(
    sim: KaleyraSimulator,
    config: SimulatorConfig,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
) -> Answer:
    """Route one request; raises :class:`Reset` when a fault drops the connection."""
    if path.startswith("/_sim/"):
        sim._stats.add("req.sim")
        return (*_control(sim, method, path, body), None)

    for endpoint, regex, allowed in _ROUTES:  # noqa: B007 - used after the break
        match = regex.match(path)
        if match:
            break
    else:
        sim._stats.add("req.unknown")
        return (*str_error(404, "404", "Not Found", {"path": path}), None)
    sim._stats.add(f"req.{endpoint}")
    is_rcs = endpoint != "soip_check"
    if method != allowed:
        return (*str_error(405, "405", "Method Not Allowed", {"allowed": allowed}), {"Allow": allowed})

    if config.latency:
        time.sleep(config.latency)

    if sim._bucket is not None:
        wait = sim._bucket.take()
        if wait:
            return _too_many(sim, config, wait)

    faults = sim._dice.roll(config)
    for kind in faults - {"truncated"}:  # truncated is counted only when it hits a 200
        sim._stats.add(f"fault.{kind}")
    if "reset" in faults:
        raise Reset
    if "error_5xx" in faults:
        status = sim._dice.choice((500, 502, 503, 504))
        message = "Temporal error, try again later" if status == 503 else HTTPStatus(status).phrase
        return (*(rcs_error(status, message) if is_rcs else str_error(status, str(status), message)), None)
    if "rate_429" in faults:
        return _too_many(sim, config, 1.0)
    if "slow" in faults:
        time.sleep(config.slow_seconds)

    error = _check_auth(sim, config, headers, match.group("sid"), is_rcs)
    if error is not None:
        return (*error, None)

    if endpoint == "rcs_single":
        status, payload = _rcs_single(sim, match.group("number"))
    elif endpoint == "rcs_bulk":
        status, payload = _rcs_bulk(sim, config, body)
    else:
        status, payload = _soip(sim, config, headers, body)

    if status == 200 and "truncated" in faults:
        sim._stats.add("fault.truncated")
        payload = payload[: max(1, len(payload) // 2)]
    return status, payload, None


def _too_many(sim: KaleyraSimulator, config: SimulatorConfig, wait: float) -> Answer:
    sim._stats.add("rate_limited")
    headers = {"Retry-After": str(max(1, math.ceil(wait)))} if config.retry_after else None
    return (*str_error(429, "429", "Throttling", {"error": "Too many requests"}, data={}), headers)


def _check_auth(
    sim: KaleyraSimulator, config: SimulatorConfig, headers: Mapping[str, str], sid: str, is_rcs: bool
) -> tuple[int, bytes] | None:
    key = headers.get(API_KEY_HEADER)
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
    return rcs_error(401, problem) if is_rcs else str_error(401, "RBC201", problem)


def _rcs_single(sim: KaleyraSimulator, raw: str) -> tuple[int, bytes]:
    number = urllib.parse.unquote(raw)
    if not E164_RE.match(number):
        return rcs_error(400, "Invalid device address", {"deviceAddress": "must be E.164 with a leading +"})
    device = rcs_answer(number)
    device["deviceAddress"] = device["deviceAddress"][1:]  # Kaleyra's single sample drops the +
    sim._stats.add("numbers.rcs")
    return 200, json_bytes({"code": RCS_OK_CODE, "message": RCS_OK_MESSAGE, "data": device, "error": {}})


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
    if not BULK_MIN <= len(unique) <= BULK_MAX:
        return rcs_error(
            400,
            f"deviceAddresses must hold {BULK_MIN} to {BULK_MAX} distinct valid E.164 numbers",
            {"count": len(unique), "min": BULK_MIN, "max": BULK_MAX},
        )
    fragments = list(unique.values())
    sim._stats.add("numbers.rcs", len(fragments))
    dice = sim._dice
    if config.bulk_missing and dice.chance(config.bulk_missing):
        sim._stats.add("fault.bulk_missing")
        drop = max(1, len(fragments) // 20)
        for index in sorted(dice.sample(range(len(fragments)), drop), reverse=True):
            del fragments[index]
    if config.bulk_extra and dice.chance(config.bulk_extra):
        sim._stats.add("fault.bulk_extra")
        for _ in range(3):
            extra = "+1999" + str(dice.randint(1000000, 9999999))
            if extra not in unique:
                fragments.append(bulk_fragment(extra) or "")
    return 200, ('{"devices":[' + ",".join(fragments) + "]}").encode()


def _soip(
    sim: KaleyraSimulator, config: SimulatorConfig, headers: Mapping[str, str], body: bytes
) -> tuple[int, bytes]:
    numbers, profile, error = _soip_numbers(body, (headers.get("Content-Type") or "").lower())
    if error:
        return soip_bad(error)
    sim._stats.add("numbers.soip", len(numbers))
    if config.callback_url:
        sim._callbacks.schedule(callback_payloads(numbers, profile), config)
    return 202, json_bytes({"code": SOIP_OK_CODE, "message": SOIP_OK_MESSAGE, "data": [], "error": {}})


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


def _control(sim: KaleyraSimulator, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    if path == "/_sim/stats" and method == "GET":
        return 200, json_bytes(sim.stats())
    if path == "/_sim/reset" and method == "POST":
        sim.reset_stats()
        return 200, json_bytes({"reset": True})
    if path == "/_sim/config" and method == "GET":
        return 200, json_bytes(sim.config.public())
    if path == "/_sim/config" and method == "POST":
        try:
            changes = json.loads(body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("config changes must be a JSON object")
            sim.configure(**changes)
        except (TypeError, ValueError) as exc:
            return str_error(400, "SIM400", "Bad simulator config", {"error": str(exc)})
        return 200, json_bytes(sim.config.public())
    return str_error(404, "404", "Not Found", {"path": path})
