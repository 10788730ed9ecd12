"""The body types a Kaleyra callback profile can choose (JSON, XML, HTML, text), read into plain data.

The customer writes the body in Kaleyra's console with placeholders, so names and nesting are theirs:
every reader here returns dicts and lists for the tolerant record search in ``parsing``. XML is read
with the standard library's expat with any DTD refused, so no entity is ever declared, let alone
expanded (billion laughs) or fetched (XXE); such a body is refused outright (400), not stored.
"""

from __future__ import annotations

import html
import json
import re
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl
from xml.parsers import expat

_NOT_KEY = re.compile(r"[^a-z0-9]")
_MAX_XML_ELEMENTS = 100_000


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


class NotJson:
    """Why a body is not JSON (kept rather than raised: the parser words its own error)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def read_json(body: bytes) -> Any:
    """The body as JSON, or a :class:`NotJson` saying why not."""
    try:
        return json.loads(body.strip().decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:
        return NotJson(exc)


def form_fields(text: str) -> dict[str, Any]:
    """``a=1&b=2``; a repeated key becomes a list."""
    data: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key in data:
            existing = data[key]
            data[key] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            data[key] = value
    return data


def _refuse(*_: Any) -> None:
    raise RefusedBody("XML with a DOCTYPE or entity declaration is refused")


def read_xml(text: str) -> dict[str, Any]:
    """Elements as nested dicts (attributes as keys, repeated elements as lists, leaves as text)."""
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    root: dict[str, Any] = {}
    stack: list[tuple[str, dict[str, Any], list[str]]] = [("", root, [])]
    seen = 0

    def start(tag: str, attributes: dict[str, str]) -> None:
        nonlocal seen
        seen += 1
        if seen > _MAX_XML_ELEMENTS:
            raise ValueError(f"more than {_MAX_XML_ELEMENTS} XML elements")
        stack.append((tag.rpartition(":")[2], dict(attributes), []))

    def end(tag: str) -> None:
        name, node, texts = stack.pop()
        value: Any = node if node else "".join(texts).strip()
        parent = stack[-1][1]
        if name in parent:
            existing = parent[name]
            parent[name] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            parent[name] = value

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = lambda data: stack[-1][2].append(data)
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise ValueError(f"body is not valid XML: {exc}") from None
    return root


_PAIR = re.compile(r"\s*([A-Za-z_][\w.\- ]{0,63}?)\s*[=:]\s*(.*?)\s*")
_NUMBER = re.compile(r"\+?\d[\d\- ]{6,18}\d")


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


_TAG = re.compile(r"<[^>]*>")


def read_html(text: str, names: tuple[str, str, str]) -> dict[str, Any]:
    """The text of an HTML body (tags dropped, entities decoded), read as text."""
    return read_text(html.unescape(_TAG.sub("\n", text)), names)


def _is_xml(media: str, text: str) -> bool:
    if media.endswith("xml"):
        return True
    if media in ("text/html", "text/plain", "application/x-www-form-urlencoded") or not text.startswith("<"):
        return False
    return not text[:15].lower().startswith(("<!doctype html", "<html"))


def decode_payload(
    body: bytes, content_type: str | None, query: str, json_value: Any, names: tuple[str, str, str]
) -> tuple[Any, dict[str, Any]]:
    """(payload, context from the query string); ``ValueError`` with a reason if unreadable.

    :param json_value: the body read by :func:`read_json` (its caller keeps it for the dedupe key).
    """
    fields = form_fields(query) if query else {}
    stripped = body.strip()
    if not stripped:
        if not fields:
            raise ValueError("empty callback: no body and no query parameters")
        return fields, {}
    media = media_type(content_type)
    if media == "multipart/form-data":
        raise ValueError("multipart/form-data is not supported; stored raw")
    try:
        text = stripped.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8 text") from None
    if media.endswith("json") or (media != "application/x-www-form-urlencoded" and text[:1] in "{["):
        if not isinstance(json_value, NotJson):
            return json_value, fields
        if isinstance(json_value.error, RecursionError):
            raise ValueError("JSON body nested too deeply")
        raise ValueError(f"body is not valid JSON: {json_value.error}")
    if _is_xml(media, text):
        return read_xml(text), fields
    if media == "text/html" or text.startswith("<"):
        return read_html(text, names), fields
    if media == "application/x-www-form-urlencoded" or (
        media != "text/plain" and "=" in text and "\n" not in text
    ):
        return form_fields(text), fields
    return read_text(text, names), fields
