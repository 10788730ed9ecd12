"""SOIP callbacks: what Kaleyra would POST to the receiver after a capability check, and their delivery.

Delivery runs off the request path (a timer heap and a pool of threads, each on one keep-alive
connection), after the configured delay, with a few retries, as a real callback would arrive:
later, maybe twice, maybe never.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import requests

from airflow_provider_kaleyra.numbers.masking import mask
from kaleyra_simulator.answers import soip_answer
from kaleyra_simulator.config import SimulatorConfig
from kaleyra_simulator.profiles import TokenCache, render, token_url
from kaleyra_simulator.stats import Stats

log = logging.getLogger(__name__)


def callback_payloads(numbers: list[str], profile: str | None) -> list[dict[str, Any]]:
    """One callback body per number of a SOIP check (digits, as Kaleyra sends them), one request id."""
    request_id = uuid.uuid4().hex
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    payloads = []
    for digits in numbers:
        capable = soip_answer(digits)
        payloads.append(
            {
                "number": digits,
                "soip_capable": capable,
                "status": "capable" if capable else "not_capable",
                "callback_profile_id": profile,
                "request_id": request_id,
                "timestamp": stamp,
            }
        )
    return payloads


DELIVERY_THREADS = 16  # callbacks in flight: enough for the receiver, not the sender, to set the pace
_local = threading.local()


def _session() -> requests.Session:
    """This delivery thread's keep-alive connection (a new one per callback cost more than the receiver)."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
        session.trust_env = False  # callbacks go to 127.0.0.1: no proxy from the environment
    return session


class CallbackDispatcher:
    """Delivers SOIP callbacks after a delay, off the request path, with a few retries."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._heap: list[tuple[float, int, dict[str, Any], SimulatorConfig]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._pending = 0
        self._stopping = False
        self._tokens = TokenCache()
        self._pool = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="kaleyra-sim-callback")
        self._thread = threading.Thread(target=self._run, name="kaleyra-sim-callbacks", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending

    def schedule(self, payloads: list[dict[str, Any]], config: SimulatorConfig) -> None:
        due = time.monotonic() + config.callback_delay
        copies = 2 if config.callback_duplicates else 1
        with self._cond:
            for payload in payloads:
                for _ in range(copies):
                    heapq.heappush(self._heap, (due, next(self._seq), payload, config))
                    self._pending += 1
            self._cond.notify()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stopping:
                    return
                _, _, payload, config = heapq.heappop(self._heap)
            try:
                self._pool.submit(self._deliver, payload, config)
            except RuntimeError:  # pool shut down under us
                return

    def _deliver(self, payload: dict[str, Any], config: SimulatorConfig) -> None:
        try:
            request = render(payload, config.callback_body, config.callback_method)
            if config.callback_auth is not None:
                request[2].update(config.callback_auth.headers())
            for attempt in range(config.callback_retries + 1):
                if attempt:
                    self._stats.add("cb.retried")
                    time.sleep(min(0.05 * 2**attempt, 2.0))
                outcome = self._send(config, *request)
                if outcome == "sent":
                    self._stats.add("cb.sent")
                    return
                if outcome == "failed":
                    break
            self._stats.add("cb.failed")
            log.warning(
                "Callback for %s to %s failed after %s attempts",
                mask(payload["number"]),
                config.callback_url,
                config.callback_retries + 1,
            )
        finally:
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

    def _send(
        self, config: SimulatorConfig, params: dict[str, str], body: bytes, headers: dict[str, str]
    ) -> str:
        """``sent``, ``retry``, or ``failed`` (a 4xx other than 408/429: retrying will not help)."""
        auth, url = config.callback_auth, config.callback_url or ""
        advanced = auth is not None and auth.kind == "advanced"
        tokens_at = config.callback_token_url or token_url(url)
        try:
            if advanced:
                token, fetched = self._tokens.header(_session(), tokens_at, auth, config.callback_timeout)
                headers = {**headers, **token}
                self._stats.add("cb.tokens", int(fetched))
            response = _session().request(
                config.callback_method,
                url,
                params=params,
                data=body,
                headers=headers,
                timeout=config.callback_timeout,
            )
            response.close()
        except (requests.RequestException, ValueError, KeyError) as exc:
            log.debug("Callback delivery error: %s", type(exc).__name__)  # (a token error holds no token)
            return "retry"
        if response.ok:
            return "sent"
        log.debug("Callback answered HTTP %s", response.status_code)
        if advanced and response.status_code == 401:  # expired or refused: a new token, then again
            self._tokens.forget(tokens_at, auth)
            return "retry"
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            return "failed"
        return "retry"
