"""What a Kaleyra callback profile makes of a callback: its method, its body type, its authentication.

Body types as the console offers them (JSON, XML, form, text), GET with the fields in the query, and
advanced authentication: a token fetched from the customer's authentication URL with the client ID
and secret, kept until it expires, fetched again when it does or when the receiver refuses it.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from typing import Any
from xml.sax.saxutils import escape

import requests

from kaleyra_simulator.answers import json_bytes
from kaleyra_simulator.config import CallbackAuth


def _text(value: Any) -> str:
    return "true" if value is True else "false" if value is False else "" if value is None else str(value)


def render(
    payload: dict[str, Any], body_type: str, method: str
) -> tuple[dict[str, str], bytes, dict[str, str]]:
    """(query parameters, body, headers) of one callback."""
    fields = {k: _text(v) for k, v in payload.items()}
    if method == "GET":
        return fields, b"", {}
    if body_type == "form":
        return (
            {},
            urllib.parse.urlencode(fields).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
    if body_type == "xml":
        inner = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in fields.items())
        body = f'<?xml version="1.0" encoding="UTF-8"?><callback>{inner}</callback>'
        return {}, body.encode(), {"Content-Type": "application/xml"}
    if body_type == "text":
        body = "\n".join(f"{k}={v}" for k, v in fields.items())
        return {}, body.encode(), {"Content-Type": "text/plain; charset=utf-8"}
    return {}, json_bytes(payload), {"Content-Type": "application/json"}


def token_url(callback_url: str) -> str:
    """The receiver's token route beside its callback route (``.../soip/callback`` -> ``.../soip/token``)."""
    parts = urllib.parse.urlsplit(callback_url)
    path = parts.path.rsplit("/", 1)[0] + "/token"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class TokenCache:
    """One advanced-auth token per (URL, client), shared by the delivery threads; never logged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    def __repr__(self) -> str:
        return f"TokenCache({len(self._tokens)} tokens)"

    def header(
        self, session: requests.Session, url: str, auth: CallbackAuth, timeout: float
    ) -> tuple[dict[str, str], bool]:
        """The ``Authorization`` header, and whether a token was fetched for it."""
        key = (url, auth.name)
        with self._lock:
            token, deadline = self._tokens.get(key, ("", 0.0))
            fetched = not token or time.monotonic() >= deadline
            if fetched:
                token, deadline = self._fetch(session, url, auth, timeout)
                self._tokens[key] = (token, deadline)
        return {"Authorization": f"Bearer {token}"}, fetched

    def forget(self, url: str, auth: CallbackAuth) -> None:
        """The receiver refused the token: the next callback fetches a new one."""
        with self._lock:
            self._tokens.pop((url, auth.name), None)

    def _fetch(
        self, session: requests.Session, url: str, auth: CallbackAuth, timeout: float
    ) -> tuple[str, float]:
        creds = {"client_id": auth.name, "client_secret": auth.value}
        style = auth.token_request
        response = session.post(
            url,
            json=creds if style == "json" else None,
            data=creds if style == "form" else None,
            auth=(auth.name, auth.value) if style == "basic" else None,
            timeout=timeout,
        )
        response.raise_for_status()
        answer = response.json()
        return str(answer["access_token"]), time.monotonic() + float(answer.get("expires_in") or 60)
