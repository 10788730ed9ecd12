"""A callback as received, and its body (JSON, XML, HTML, text, form) read into dicts and lists. XML is
read by expat with any DTD refused (400, not stored): no entity is declared, expanded or fetched."""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from itertools import count
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode
from xml.parsers import expat

_NOT_KEY = re.compile(r"[^a-z0-9]")
_MAX_XML_ELEMENTS = 100_000
_FORM = "application/x-www-form-urlencoded"


class RefusedBody(ValueError):
    """A body that is hostile rather than unreadable (an XML DTD): refused with 400, never stored."""


@lru_cache(maxsize=4096)  # payload keys repeat from callback to callback; bounded against odd ones
def loose_key(name: str) -> str:
    """Compare keys loosely: ``phoneNumber``, ``phone_number`` and ``Phone-Number`` are one key."""
    return _NOT_KEY.sub("", name.lower())


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def unescape(value: str) -> str:
    """HTML-escaped placeholder values (``&#43;91...``, ``&amp;``) read as the characters they stand for."""
    return html.unescape(value) if "&" in value else value


@dataclass(frozen=True)
class RawCallback:
    """One HTTP delivery exactly as received; stored whatever its content."""

    method: str
    body: bytes
    content_type: str | None = None
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @cached_property
    def dedupe_key(self) -> str:
        """Same method, query and body (canonically) means the same delivery, re-sent (computed once)."""
        head = b"%s\n%s\n" % (self.method.upper().encode(), _sorted_query(self.query).encode())
        return hashlib.sha256(head + self._canonical_body()).hexdigest()

    def _canonical_body(self) -> bytes:
        """JSON and form bodies hash the same whatever their key order or spacing; anything else as is."""
        if not self.body.strip():
            return b""
        if not isinstance(self.decoded_json, Exception):
            with suppress(ValueError, RecursionError):
                return json.dumps(self.decoded_json, sort_keys=True, separators=(",", ":")).encode()
        if media_type(self.content_type) == _FORM:
            with suppress(UnicodeDecodeError):
                return _sorted_query(self.body.strip().decode("utf-8")).encode()
        return self.body

    @cached_property
    def decoded_json(self) -> Any:
        """The body read as JSON, once (the dedupe key and the parser both need it); the error if not JSON."""
        try:
            return json.loads(self.body.strip().decode("utf-8-sig"))
        except (ValueError, RecursionError) as exc:
            return exc


def _sorted_query(text: str) -> str:
    return urlencode(sorted(parse_qsl(text, keep_blank_values=True)))


def form_fields(text: str) -> dict[str, Any]:
    """``a=1&b=2``; a repeated key becomes a list."""
    return {k: v[0] if len(v) == 1 else v for k, v in parse_qs(text, keep_blank_values=True).items()}


def _refuse(*_: Any) -> None:
    raise RefusedBody("XML with a DOCTYPE or entity declaration is refused")


def read_xml(text: str) -> dict[str, Any]:
    """Elements as nested dicts (attributes as keys, repeated elements as lists, leaves as text)."""
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = parser.EntityDeclHandler = parser.ExternalEntityRefHandler = _refuse
    root: dict[str, Any] = {}
    stack: list[tuple[str, dict[str, Any], list[str]]] = [("", root, [])]
    seen = count(1)

    def start(tag: str, attributes: dict[str, str]) -> None:
        if next(seen) > _MAX_XML_ELEMENTS:
            raise ValueError(f"more than {_MAX_XML_ELEMENTS} XML elements")
        stack.append((tag.rpartition(":")[2], dict(attributes), []))

    def end(tag: str) -> None:
        name, node, texts = stack.pop()
        value, parent = node or "".join(texts).strip(), stack[-1][1]
        if name in parent:  # a repeated element becomes a list
            value = [*old, value] if isinstance(old := parent[name], list) else [old, value]
        parent[name] = value

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = lambda data: stack[-1][2].append(data)
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise ValueError(f"body is not valid XML: {exc}") from None
    return root


_PAIR = re.compile(r"\s*([A-Za-z_][\w.\- ]{0,63}?)\s*[=:]\s*(.*?)\s*")
_NUMBER = re.compile(r"\+?\d[\d\- ]{6,18}\d")
_TAG = re.compile(r"<[^>]*>")


def read_text(text: str, names: tuple[str, str, str]) -> dict[str, Any]:
    """``key=value`` or ``key: value`` pairs (one a line, or split by ``&`` or ``;``); else positional
    fields separated by spaces, commas, ``;`` or ``|``: the number, then status and request id, stored
    under ``names`` (the mapping's first number, capability and request id keys)."""
    pairs = [m.groups() for part in re.split(r"[\r\n&;]+", text) if (m := _PAIR.fullmatch(part))]
    if pairs:
        return dict(pairs)
    tokens = [t for t in re.split(r"[\s,;|]+", text.strip()) if t]
    number = next((t for t in tokens if _NUMBER.fullmatch(t)), None)
    if number is None:
        raise ValueError("text body has neither key=value pairs nor a phone number")
    rest = [t for t in tokens if t is not number]
    return dict(zip(names, [number, *rest[:2]], strict=False))


def decode_payload(raw: RawCallback, names: tuple[str, str, str]) -> tuple[Any, dict[str, Any]]:
    """(payload, context from the query string); ``ValueError`` with a reason if unreadable. ``names``:
    where :func:`read_text` puts a positional text body's fields."""
    fields = form_fields(raw.query) if raw.query else {}
    stripped = raw.body.strip()
    if not stripped:
        if not fields:
            raise ValueError("empty callback: no body and no query parameters")
        return fields, {}
    media = media_type(raw.content_type)
    if media == "multipart/form-data":
        raise ValueError("multipart/form-data is not supported; stored raw")
    try:
        text = stripped.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8 text") from None
    if media.endswith("json") or (media != _FORM and text[:1] in "{["):
        if not isinstance(raw.decoded_json, Exception):
            return raw.decoded_json, fields
        if isinstance(raw.decoded_json, RecursionError):
            raise ValueError("JSON body nested too deeply")
        raise ValueError(f"body is not valid JSON: {raw.decoded_json}")
    html_page = media == "text/html" or text[:15].lower().startswith(("<!doctype html", "<html"))
    if media.endswith("xml") or (text[:1] == "<" and not html_page and media not in ("text/plain", _FORM)):
        return read_xml(text), fields
    if media == "text/html" or text.startswith("<"):  # its text, tags dropped and entities decoded
        return read_text(html.unescape(_TAG.sub("\n", text)), names), fields
    if media == _FORM or (media != "text/plain" and "=" in text and "\n" not in text):
        return form_fields(text), fields
    return read_text(text, names), fields
