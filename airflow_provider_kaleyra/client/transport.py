"""HTTP plumbing for the hook: one pooled session, client-side pacing, bounded retries.

Every failure to obtain a readable answer (429, 5xx, a dropped connection, a timeout, a body that
is cut, corrupt, too deep, too big or too slow) is retried within the budget (:func:`call_budget`,
docs/guarantees.md); other 4xx are final, and 401/403 stop every call of the transport at once,
because a revoked key or a disabled RCS channel will not heal by waiting.
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import requests
import urllib3
from requests.adapters import HTTPAdapter

from airflow_provider_kaleyra.client import api
from airflow_provider_kaleyra.client.body import NO_ANSWER as _NO_ANSWER, Unreadable, Watchdog, read_body
from airflow_provider_kaleyra.client.exceptions import (
    KaleyraApiError,
    KaleyraAuthError,
    error_for_answer,
)
from airflow_provider_kaleyra.client.pacing import BACKOFF_CAP, MAX_RETRY_AFTER, Pacer, retry_after_seconds

log = logging.getLogger(__name__)

REDACTED = "***"
MIN_SECRET_LENGTH = 4  # shorter "secrets" would redact ordinary words of every answer

_ENCODE = msgspec.json.Encoder().encode  # (a bulk body: 3x faster than ``json``)
_JSON_TYPE = {"Content-Type": "application/json"}

# A base URL that cannot work: waiting will not fix it.
_BAD_URL = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
)


def call_budget(timeout: float, max_retries: int) -> float:
    """The longest one call can take, in seconds, besides its wait for a turn under the rate limit:
    every attempt to its deadline, every sleep capped (6 x 30 + 5 x 60 = 480 s with the defaults)."""
    return (max_retries + 1) * timeout + max_retries * max(MAX_RETRY_AFTER, BACKOFF_CAP)


class Transport:
    """Sends one logical call, retrying what can be retried, and returns the decoded JSON body.
    ``secrets`` (the callback secret), like the API key, are replaced in every answer by :meth:`_send`."""

    def __init__(
        self,
        *,
        api_key: str,
        timeout: float,
        max_retries: int,
        rate_limit: float,
        pool_size: int,
        backoff: float = 0.5,
        secrets: tuple[str | None, ...] = (),
    ) -> None:
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.pacer = Pacer(rate_limit)
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(pool_size, 1), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({api.API_KEY_HEADER: api_key, "Accept": "application/json"})
        # requests reads the environment (proxies, CA bundle, .netrc) on every request: 0.6 ms of a
        # bulk call's 2 ms. Read once instead, same rules (``no_proxy`` per host); never .netrc.
        self.session.trust_env = False
        self.session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self._proxies: dict[str, dict[str, str]] = {}
        self._templates: dict[str, requests.PreparedRequest] = {}
        self._watchdog = Watchdog()
        self._redactions = _redactions((api_key, *secrets))
        self.requests_sent = 0
        self._bad_text_logged = False
        self._count_lock = threading.Lock()
        # Per origin: the refusal that stopped every call, and whether the first answer is in; until
        # it is, one request probes the key while the others wait (a dead key costs one request).
        # Sleepers wait on ``_state`` and wake at once on a refusal.
        self._state = threading.Condition()
        self._dead: dict[str, KaleyraAuthError] = {}
        self._probing: set[str] = set()
        self._answered: set[str] = set()

    def __repr__(self) -> str:
        return f"Transport(timeout={self.timeout}, max_retries={self.max_retries})"

    def _proxies_for(self, url: str) -> dict[str, str]:
        """The environment's proxies for ``url``'s host (none when ``no_proxy`` names it), read once per host."""
        origin = _origin(url)
        proxies = self._proxies.get(origin)
        if proxies is None:
            proxies = self._proxies[origin] = requests.utils.get_environ_proxies(url)
        return proxies

    def _raise_if_refused(self, origin: str) -> None:
        refusal = self._dead.get(origin)
        if refusal is not None:
            raise KaleyraAuthError(refusal.message, status=refusal.status, code=refusal.code)

    def _refused(self, origin: str, error: KaleyraAuthError) -> None:
        with self._state:
            self._dead.setdefault(origin, error)
            self._state.notify_all()

    def _sleep(self, origin: str, seconds: float) -> None:
        """Sleep, unless (or until) the key is refused: then raise at once."""
        with self._state:
            self._state.wait_for(lambda: origin in self._dead, timeout=seconds)
        self._raise_if_refused(origin)

    def _admit(self, origin: str) -> bool:
        """Before the first answer from ``origin``, let one request through; ``True`` for that one."""
        if origin in self._answered:
            return False
        with self._state:
            if origin not in self._answered and origin not in self._probing:
                self._probing.add(origin)
                return True
            self._state.wait_for(
                lambda: origin in self._answered or origin in self._dead, timeout=self.timeout
            )
        return False

    def _first_answer_in(self, origin: str) -> None:
        with self._state:
            self._answered.add(origin)
            self._probing.discard(origin)
            self._state.notify_all()

    def _sleep_before_retry(self, origin: str, attempt: int, retry_after: float | None) -> None:
        if retry_after is not None:
            self.pacer.hold(retry_after)
            self._sleep(origin, retry_after)
            return
        delay = min(BACKOFF_CAP, self.backoff * (2**attempt))
        self._sleep(origin, delay * random.uniform(0.5, 1.0))

    def call(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        accept: tuple[int, ...] = (200,),
        shape: Callable[[Any], Any] | None = None,
        typed: msgspec.json.Decoder | None = None,
    ) -> Any:
        """One API call; raises ``KaleyraApiError`` once retries are spent or the error is final.

        :param shape: reads the decoded body (``None`` when empty; without it, ``{}``); a ``ValueError``
            or ``TypeError`` from it means "not an answer", retried like an unreadable body.
        :param typed: decodes a usual 2xx body into records (a body it refuses is read as plain JSON).
        """
        origin = _origin(url)
        last: KaleyraApiError | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep_before_retry(origin, attempt - 1, last.retry_after if last else None)
            self.pacer.wait(lambda seconds: self._sleep(origin, seconds))
            probe = self._admit(origin)
            try:
                return self._attempt(origin, method, url, json, accept, shape, typed)
            except KaleyraApiError as exc:
                if not exc.retryable:
                    raise
                last = exc
                log.warning("Kaleyra %s %s: %s (attempt %s)", method, _path(url), last, attempt + 1)
            finally:
                if probe:  # (after a refusal is recorded: nobody waiting may send with a dead key)
                    self._first_answer_in(origin)
        assert last is not None
        attempts = self.max_retries + 1
        raise KaleyraApiError(
            f"gave up after {attempts} attempt{'s' if attempts > 1 else ''}: {last.message}",
            status=last.status,
            code=last.code,
            retryable=True,
        )

    def _attempt(
        self,
        origin: str,
        method: str,
        url: str,
        json: Any,
        accept: tuple[int, ...],
        shape: Callable[[Any], Any] | None,
        typed: msgspec.json.Decoder | None = None,
    ) -> Any:
        """One request and its answer, or the ``KaleyraApiError`` saying why there is none."""
        status, reason, headers, body = self._send(origin, method, url, json)
        if status in accept:
            try:
                document = self._decode(body, typed)
                return shape(document) if shape else ({} if document is None else document)
            except (ValueError, TypeError, RecursionError) as exc:
                raise KaleyraApiError(_unreadable(exc), status=status, retryable=True) from None
        try:
            document = _decode(body)
        except (ValueError, RecursionError):
            document = None
        error = error_for_answer(status, reason, document)
        if isinstance(error, KaleyraAuthError):
            self._refused(origin, error)
        elif status == 429:
            error.retry_after = retry_after_seconds(headers.get("Retry-After"))
        raise error

    def _send(self, origin: str, method: str, url: str, json: Any) -> tuple[int, str, Any, bytes]:
        """One attempt: ``(status, reason, headers, body)`` with secrets redacted, within the deadline.

        :raises KaleyraApiError: (retryable) when no whole, readable answer came back in time.
        """
        self._raise_if_refused(origin)
        with self._count_lock:
            self.requests_sent += 1
        deadline = time.monotonic() + self.timeout
        try:
            request = self._prepared(method, url, None if json is None else _ENCODE(json))
            response = self.session.send(
                request,
                timeout=urllib3.Timeout(total=self.timeout),  # connect + headers
                proxies=self._proxies_for(url),
                stream=True,
            )
        except _BAD_URL as exc:
            raise KaleyraApiError(
                f"cannot call {_path(url)} ({type(exc).__name__}): check the connection's base URLs"
            ) from None
        except _NO_ANSWER as exc:
            raise KaleyraApiError(f"no answer from Kaleyra: {type(exc).__name__}", retryable=True) from None
        try:
            body = read_body(response, deadline, self.timeout, self._watchdog)
        except (Unreadable, *_NO_ANSWER) as exc:
            why = str(exc) if isinstance(exc, Unreadable) else type(exc).__name__
            raise KaleyraApiError(
                f"no readable answer from Kaleyra: {why}", status=response.status_code, retryable=True
            ) from None
        finally:
            response.close()  # a body not read to its end takes its connection with it
        reason = self._redact((response.reason or "").encode("utf-8", "replace")).decode("utf-8", "replace")
        return response.status_code, reason, response.headers, self._redact(body)

    def _prepared(self, method: str, url: str, body: bytes | None) -> requests.PreparedRequest:
        """A request, prepared once per URL that has a body (the bulk and SOIP calls) and copied:
        ``prepare`` reading the URL and headers every time cost a tenth of a bulk call's CPU."""
        template = self._templates.get(url) if body is not None else None
        if template is None:
            template = requests.PreparedRequest()
            headers = self.session.headers if body is None else {**self.session.headers, **_JSON_TYPE}
            template.prepare(method=method, url=url, headers=headers, data=body, hooks=self.session.hooks)
            if body is None:
                return template
            self._templates[url] = template
        request = requests.PreparedRequest()
        request.method, request.url, request.hooks = method, template.url, self.session.hooks
        request.headers = template.headers.copy()
        request.body, request.headers["Content-Length"] = body, str(len(body))  # type: ignore[arg-type]
        return request

    def _decode(self, body: bytes, typed: msgspec.json.Decoder | None = None) -> Any:
        """:func:`_decode`, but a byte that is not UTF-8 (seen in ``carrierId``) does not cost the
        answer: it becomes U+FFFD, and the first time it happens is logged."""
        try:
            return _decode(body, typed)
        except msgspec.DecodeError:
            replaced = body.decode("utf-8", "replace").encode()
            if replaced == body:
                raise  # readable text that is not JSON
            if not self._bad_text_logged:
                self._bad_text_logged = True
                log.warning("Kaleyra answered with text that is not UTF-8; the bad bytes read as U+FFFD")
            return _decode(replaced, typed)

    def _redact(self, data: bytes) -> bytes:
        for secret in self._redactions:
            if secret in data:
                data = data.replace(secret, REDACTED.encode())
        return data


def _decode(body: bytes, typed: msgspec.json.Decoder | None = None) -> Any:
    """The JSON document of a body, ``None`` when empty; ``ValueError``/``RecursionError`` when unreadable
    (msgspec, which Airflow brings: twice as fast as ``json`` on a 500-device answer)."""
    if not body.strip():
        return None
    if typed is not None:
        try:
            return typed.decode(body)
        except msgspec.ValidationError:
            pass  # JSON, but not of the usual types: read as it is
    return msgspec.json.decode(body)


def _unreadable(exc: BaseException) -> str:
    """Why a 2xx body is not an answer: the shape's own words, or the kind of decoding failure."""
    if isinstance(exc, RecursionError):
        return "Kaleyra answered with JSON nested too deep"
    if isinstance(exc, msgspec.DecodeError):
        return "Kaleyra answered with an unreadable body"
    return str(exc)


def _redactions(secrets: tuple[str | None, ...]) -> list[bytes]:
    """The byte forms a secret takes in a body: as is, and as a JSON string escapes it (longest first)."""
    forms: set[bytes] = set()
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            forms.add(secret.encode("utf-8"))
            forms.add(jsonlib.dumps(secret)[1:-1].encode("ascii"))
    return sorted(forms, key=len, reverse=True)


def _origin(url: str) -> str:
    return url.split("/", 3)[2] if "://" in url else url


def _path(url: str) -> str:
    """The URL without the number at its end, for logs (numbers are personal data)."""
    head, _, tail = url.rpartition("/")
    return head + "/…" if tail.startswith(("%2B", "+")) else url
