"""HTTP plumbing for the hook: one pooled session, client-side pacing, bounded retries.

Kaleyra publishes no numeric rate limit, so the client paces itself and obeys 429 and
``Retry-After``. Retries cover 429, 5xx, dropped connections, timeouts and unreadable
bodies; other 4xx are final, and 401/403 fail fast because a revoked key or a disabled
RCS channel will not heal by waiting.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from airflow_provider_kaleyra.api import API_KEY_HEADER
from airflow_provider_kaleyra.exceptions import KaleyraApiError, KaleyraAuthError

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 60.0  # never sleep longer than this on one Retry-After
BACKOFF_CAP = 30.0
PACER_SLACK = 0.1  # seconds of lateness the pacer makes up (a burst of at most rate x 0.1 + 1)


class Pacer:
    """Spaces requests at ``rate`` per second across all threads; ``hold`` pauses everyone.

    A thread that reaches its slot late (busy with a response, waiting for the GIL) does not
    push the schedule back: up to ``PACER_SLACK`` seconds of lateness are made up by sending
    the next requests sooner. Without that, each late slot is lost for good: at 100 requests
    a second, a 2.5 ms average lateness costs a quarter of the throughput. In any window of
    ``t`` seconds at most ``rate * (t + PACER_SLACK) + 1`` requests go out.
    """

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now - PACER_SLACK)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)

    def hold(self, seconds: float) -> None:
        """After a 429 the server is the authority: nobody sends before ``seconds`` from now."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta or HTTP date), capped; ``None`` when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _error_from(response: requests.Response) -> KaleyraApiError:
    """Map an error answer to an exception with Kaleyra's ``code`` and ``message`` (never the key)."""
    code: str | int | None = None
    message = response.reason or "error"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("code")
        error = body.get("error")
        detail = body.get("message") or (error.get("error") if isinstance(error, dict) else None)
        if detail:
            message = str(detail)
    status = response.status_code
    if status in (401, 403):
        return KaleyraAuthError(
            f"Kaleyra refused the credentials ({message}): check the API key and SID of the "
            "connection, and that the RCS channel is enabled on the account",
            status=status,
            code=code,
        )
    retryable = status == 429 or status >= 500
    return KaleyraApiError(f"Kaleyra answered {message}", status=status, code=code, retryable=retryable)


class Transport:
    """Sends one logical call, retrying what can be retried, and returns the decoded JSON body."""

    def __init__(
        self,
        *,
        api_key: str,
        timeout: float,
        max_retries: int,
        rate_limit: float,
        pool_size: int,
        backoff: float = 0.5,
    ) -> None:
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.pacer = Pacer(rate_limit)
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(pool_size, 1), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({API_KEY_HEADER: api_key, "Accept": "application/json"})
        # requests reads the environment (proxies, CA bundle, .netrc) again on every request:
        # 0.6 ms of the 2 ms a bulk call costs the client. Read it once instead, with the
        # same rules (``no_proxy`` per host); never use .netrc.
        self.session.trust_env = False
        self.session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self._proxies: dict[str, dict[str, str]] = {}
        self.requests_sent = 0
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Transport(timeout={self.timeout}, max_retries={self.max_retries})"

    def close(self) -> None:
        self.session.close()

    def _proxies_for(self, url: str) -> dict[str, str]:
        """The environment's proxies for ``url``'s host (none when ``no_proxy`` names it), read once per host."""
        origin = url.split("/", 3)[2] if "://" in url else url
        proxies = self._proxies.get(origin)
        if proxies is None:
            proxies = self._proxies[origin] = requests.utils.get_environ_proxies(url)
        return proxies

    def _sleep_before_retry(self, attempt: int, retry_after: float | None) -> None:
        if retry_after is not None:
            self.pacer.hold(retry_after)
            time.sleep(retry_after)
            return
        delay = min(BACKOFF_CAP, self.backoff * (2**attempt))
        time.sleep(delay * random.uniform(0.5, 1.0))

    def call(self, method: str, url: str, *, json: Any = None, accept: tuple[int, ...] = (200,)) -> Any:
        """One API call; raises ``KaleyraApiError`` once retries are spent or the error is final."""
        last: KaleyraApiError | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep_before_retry(attempt - 1, last.retry_after if last else None)
            self.pacer.wait()
            with self._count_lock:
                self.requests_sent += 1
            try:
                response = self.session.request(
                    method, url, json=json, timeout=self.timeout, proxies=self._proxies_for(url)
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = KaleyraApiError(f"no answer from Kaleyra: {type(exc).__name__}", retryable=True)
                log.warning("Kaleyra %s %s: %s (attempt %s)", method, _path(url), last, attempt + 1)
                continue
            if response.status_code in accept:
                try:
                    return response.json() if response.content else {}
                except ValueError:
                    last = KaleyraApiError(
                        "Kaleyra answered with an unreadable body",
                        status=response.status_code,
                        retryable=True,
                    )
                    log.warning("Kaleyra %s %s: %s (attempt %s)", method, _path(url), last, attempt + 1)
                    continue
            last = _error_from(response)
            if response.status_code == 429:
                last.retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if not last.retryable:
                raise last
            log.warning("Kaleyra %s %s: %s (attempt %s)", method, _path(url), last, attempt + 1)
        assert last is not None
        raise KaleyraApiError(
            f"gave up after {self.max_retries + 1} attempts: {last.message}",
            status=last.status,
            code=last.code,
            retryable=True,
        )


def _path(url: str) -> str:
    """The URL without the number at its end, for logs (numbers are personal data)."""
    head, _, tail = url.rpartition("/")
    return head + "/…" if tail.startswith(("%2B", "+")) else url
