"""Errors raised by the provider, and which one an error answer is. None ever carries the API key:
a message quoting Kaleyra is built from an answer the transport has already redacted."""

from __future__ import annotations

from typing import Any

from airflow_provider_kaleyra.client import api


class KaleyraApiError(Exception):
    """An error answered by (or on the way to) the Kaleyra API: ``status`` is ``None`` when no answer
    came back, ``code`` is Kaleyra's own (a string or a number), ``retryable`` says a retry may succeed."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | int | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retryable = retryable
        self.retry_after: float | None = None  # seconds, from a 429's Retry-After
        self.detail = message  # Kaleyra's words when the error came from an answer

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code not in (None, ""):
            parts.append(f"code {self.code}")
        return " | ".join(parts)


class KaleyraAuthError(KaleyraApiError):
    """401/403: the API key is wrong or revoked, or the RCS channel is not enabled. Never retried."""


def error_for_answer(status: int, reason: str, body: Any) -> KaleyraApiError:
    """Map an error answer to an exception with Kaleyra's ``code`` and ``message`` (already redacted)."""
    code: str | int | None = None
    message = reason or "error"
    if isinstance(body, dict):
        raw_code = body.get("code")
        code = raw_code if isinstance(raw_code, (str, int)) and not isinstance(raw_code, bool) else None
        error = body.get("error")
        detail = body.get("message") or (error.get("error") if isinstance(error, dict) else None)
        if detail:
            message = str(detail)[:500]
    if status in (401, 403):
        error: KaleyraApiError = KaleyraAuthError(
            f"Kaleyra refused the credentials ({message}): check the API key and SID of the "
            "connection, and that the RCS channel is enabled on the account",
            status=status,
            code=code,
        )
        error.detail = message  # Kaleyra's own words, for the connection test
        return error
    retryable = status == 429 or status >= 500
    return KaleyraApiError(f"Kaleyra answered {message}", status=status, code=code, retryable=retryable)


def connection_problem(exc: KaleyraApiError, base: str) -> str:
    """What a failed connection test (one lookup) says about the connection, in the user's terms."""
    said = str(exc.detail).lower()
    if exc.status is None:
        return f"No answer from {base} ({exc.message}): check the pod or rcs_base_url, and the network"
    if exc.status == 403 or (exc.status == 401 and ("channel" in said or "rcs" in said)):
        return (
            f"The RCS channel is not enabled on this Kaleyra account (ask Kaleyra to enable it): {exc.detail}"
        )
    if exc.status == 401 and "sid" in said:
        return f"Kaleyra does not know the account SID (the connection's login): {exc.detail}"
    if exc.status == 401:
        return f"Kaleyra refused the API key (the connection's password): {exc.detail}"
    if exc.status == 404 or exc.status < 300:
        return (
            f"{base} is not Kaleyra's RCS API ({exc}): check the connection's pod or rcs_base_url "
            f"(e.g. {api.RCS_HOSTS[api.DEFAULT_POD]})"
        )
    if exc.status == 429 or exc.status >= 500:
        return f"Kaleyra is not answering properly right now ({exc}): try again later"
    return f"Kaleyra answered the probe lookup with an error ({exc})"
