"""SOIP callbacks as a Kaleyra callback profile sends them: one per number of a check, off the request path,
after the configured delay, with a few retries (later, maybe twice, maybe never), in every body type, method
and authentication (advanced: a token kept until it expires, fetched anew if it does or is refused)."""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

import requests
from requests.adapters import HTTPAdapter

from airflow_provider_kaleyra.numbers.masking import mask
from kaleyra_simulator.answers import json_bytes, soip_answer
from kaleyra_simulator.config import CallbackAuth, SimulatorConfig

log = logging.getLogger(__name__)

DELIVERY_THREADS = 16  # callbacks in flight: enough for the receiver, not the sender, to set the pace
TIMEOUT = 5.0  # seconds to wait for the receiver or its token URL


def render(payload: dict[str, Any], config: SimulatorConfig) -> tuple[dict[str, str], bytes, dict[str, str]]:
    """(query parameters, body, headers) of one callback."""
    fields = {
        k: "true" if v is True else "false" if v is False else "" if v is None else str(v)
        for k, v in payload.items()
    }
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
        # keep-alive connections, one per thread (a new one per callback cost more than the receiver)
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
        auth, session, url = config.callback_auth, self._session, config.callback_url or ""
        kind = auth.kind if auth else None
        tokens_at = config.callback_token_url or urllib.parse.urljoin(url, "token")  # beside .../callback
        try:
            if kind == "advanced":
                headers["Authorization"] = f"Bearer {self._token(tokens_at, auth)}"
            elif kind == "header":
                headers[auth.name] = auth.value
            basic = (auth.name, auth.value) if kind == "basic" else None
            method = config.callback_method
            response = session.request(
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
