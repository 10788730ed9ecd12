"""Nothing a caller put in a query string reaches an access log: values are replaced, keys kept.

A callback profile's URL may carry a secret (``?token=...``), a GET callback carries the number, and a
GET token request the client secret. The standalone receiver's uvicorn access log is filtered here
for every request, refused ones and unknown paths included. On the API server, Airflow's own access
log middleware reads the request's ASGI scope after the app answered: the receiver's routes replace
the scope's query string with the redacted one (see ``receiver``), so that log shows no value either.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, quote

REDACTED = "***"


def redact_query(query: str) -> str:
    """``a=1&secret=x`` -> ``a=***&secret=***``; anything unreadable -> ``***``."""
    if not query:
        return query
    try:
        keys = [key for key, _ in parse_qsl(query, keep_blank_values=True)]
    except ValueError:
        return REDACTED
    return "&".join(f"{quote(key, safe='')[:64]}={REDACTED}" for key in keys) or REDACTED


def redact_target(target: str) -> str:
    """A request target (path and query) with the query's values redacted."""
    path, sep, query = target.partition("?")
    return f"{path}?{redact_query(query)}" if sep else target


class AccessLogRedaction(logging.Filter):
    """For ``uvicorn.access``, whose records carry ``(client, method, target, version, status)``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "?" in a for a in args):
            record.args = tuple(redact_target(a) if isinstance(a, str) and "?" in a else a for a in args)
        return True


def redact_access_log() -> None:
    """Install the filter on uvicorn's access logger once (idempotent; uvicorn keeps logger filters)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, AccessLogRedaction) for f in logger.filters):
        logger.addFilter(AccessLogRedaction())
