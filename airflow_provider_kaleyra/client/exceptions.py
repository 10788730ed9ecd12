"""Errors raised by the provider, and which one an error answer is. None ever carries the API key.

Their messages may quote Kaleyra (an error body's ``message``): the transport has replaced the
connection's secrets in every answer before any error is built from it.
"""

from __future__ import annotations

from typing import Any


class KaleyraApiError(Exception):
    """An error answered by (or on the way to) the Kaleyra API.

    :param message: what went wrong, in words.
    :param status: the HTTP status, or ``None`` when no answer came back.
    :param code: Kaleyra's own error ``code`` (a string or a number) when the body had one.
    :param retryable: whether trying again later may succeed.
    """

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
