"""Errors raised by the provider. None of them ever carries the API key.

Their messages may quote Kaleyra (an error body's ``message``): the transport has replaced the
connection's secrets in every answer before any error is built from it.
"""

from __future__ import annotations


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

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code not in (None, ""):
            parts.append(f"code {self.code}")
        return " | ".join(parts)


class KaleyraAuthError(KaleyraApiError):
    """401/403: the API key is wrong or revoked, or the RCS channel is not enabled. Never retried."""
