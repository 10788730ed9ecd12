"""A callback as received, its body (JSON, XML, HTML, text, form) read into dicts and lists, and the
numbers and capabilities in it, read tolerantly (Kaleyra publishes no format): what cannot be read is a
``parse_error``, never an exception, and the raw callback is kept. XML with a DTD is refused (400)."""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from itertools import count
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode
from xml.parsers import expat

from airflow_provider_kaleyra.client.api import e164_key
from airflow_provider_kaleyra.numbers.normalize import normalize

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


MAX_DEPTH = 6
MAX_RESULTS = 50_000


def _values(items: Iterable[str]) -> frozenset[str]:
    return frozenset(loose_key(v) for v in items)


@dataclass(frozen=True)
class FieldMapping:
    """Which payload keys hold the number, the capability and the request id (matched loosely, earlier
    keys first), and what values mean. Overridden by the connection extra ``callback_field_map`` (same
    names), or the shorthands ``number``, ``status`` and ``request_id`` naming a profile's placeholders."""

    # fmt: off
    number_keys: tuple[str, ...] = (
        "number", "mobile", "msisdn", "to", "phoneNumber", "phone", "mobileNumber", "destination",
        "recipient", "deviceAddress",
    )
    capability_keys: tuple[str, ...] = (
        "soip_capable", "is_capable", "capable", "capability", "soip_status", "status", "code", "result",
    )
    request_id_keys: tuple[str, ...] = ("request_id", "message_id", "msg_id", "bulk_id", "reference_id", "id")
    capable_values: frozenset[str] = _values([
        "true", "1", "yes", "y", "capable", "soip_capable", "enabled", "available", "supported", "active",
    ])
    not_capable_values: frozenset[str] = _values([
        "false", "0", "no", "n", "not_capable", "incapable", "non_capable", "soip_not_capable", "disabled",
        "unavailable", "not_available", "unsupported", "not_supported", "inactive",
    ])
    # fmt: on

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> FieldMapping:
        """Build from a JSON mapping (the connection extra); unknown names are an error, not a surprise."""
        data, known = data or {}, {*cls.__dataclass_fields__, *_SHORTHANDS}
        if unknown := set(data) - known:
            raise ValueError(f"callback_field_map: unknown entries {sorted(unknown)}; known: {sorted(known)}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            items = [value] if isinstance(value, str) else list(value)
            if not items or not all(isinstance(i, str) for i in items):
                raise ValueError(f"callback_field_map.{name} must be a non-empty list of strings")
            if name in _SHORTHANDS:  # a placeholder's name, tried before the tolerant defaults
                name = _SHORTHANDS[name]
                items = [*items, *kwargs.get(name, getattr(cls, name))]
            kwargs[name] = _values(items) if name.endswith("_values") else tuple(items)
        return cls(**kwargs)

    def capability(self, value: Any) -> bool | None:
        """``True``/``False`` when the value is recognised, ``None`` when it is not."""
        if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
            return bool(value)
        text = loose_key(unescape(value)) if isinstance(value, str) else None
        return True if text in self.capable_values else False if text in self.not_capable_values else None


_SHORTHANDS = {"number": "number_keys", "status": "capability_keys", "request_id": "request_id_keys"}


def _loose(record: Mapping[str, Any]) -> dict[str, Any]:
    return {loose_key(k): v for k, v in record.items() if isinstance(k, str)}


def _found(loose: dict[str, Any], keys: Iterable[str]) -> list[Any]:
    """The values under ``keys`` (loosely), in the keys' order."""
    return [loose[k] for k in map(loose_key, keys) if k in loose]


@dataclass(frozen=True)
class ParsedResult:
    """One number's answer inside a callback."""

    number_raw: str
    number: str | None
    capable: bool | None
    status: str | None = None
    request_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ParsedCallback:
    """What could be read from a callback; ``error`` is set when something could not."""

    results: tuple[ParsedResult, ...] = ()
    error: str | None = None
    refused: bool = False  # hostile (an XML DTD): answered 400 and not stored


def _records(payload: Any, context: dict[str, Any], mapping: FieldMapping, depth: int = 0) -> list[dict]:
    """Find every object that names a number; scalar fields of parents are inherited (e.g. a bulk id)."""
    if depth > MAX_DEPTH:
        return []
    if isinstance(payload, list):
        return [record for item in payload for record in _records(item, context, mapping, depth + 1)]
    if not isinstance(payload, dict):
        return []
    merged = {**context, **{k: v for k, v in payload.items() if not isinstance(v, (dict, list))}}
    if isinstance(next(iter(_found(_loose(payload), mapping.number_keys)), None), (str, int, list)):
        return [{**merged, **{k: v for k, v in payload.items() if isinstance(v, list)}}]
    return [record for child in payload.values() for record in _records(child, merged, mapping, depth + 1)]


def _split_numbers(value: Any) -> list[str]:
    if isinstance(value, list):
        return [unescape(str(v)).strip() for v in value if isinstance(v, (str, int)) and str(v).strip()]
    return [part.strip() for part in unescape(str(value)).split(",") if part.strip()]


def _callback_e164(raw: str, region: str | None) -> str | None:
    """E.164 of a number sent back: read with the connection's region, else as Kaleyra's SOIP form."""
    found = normalize(raw, region).e164
    if found is None and raw.strip().isdigit():
        found = normalize(e164_key(raw)).e164
    return found


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    return "true" if value is True else "false" if value is False else unescape(str(value))[:256]


def parse_callback(
    raw: RawCallback, mapping: FieldMapping | None = None, region: str | None = None
) -> ParsedCallback:
    """Read the numbers and capabilities in a callback; never raises on bad input."""
    mapping = mapping or FieldMapping()
    try:
        # a positional text body's number, status and request id go under the first keys of each
        names = (mapping.number_keys[0], mapping.capability_keys[0], mapping.request_id_keys[0])
        payload, context = decode_payload(raw, names)
    except RefusedBody as exc:
        return ParsedCallback(error=str(exc), refused=True)
    except ValueError as exc:
        return ParsedCallback(error=str(exc))
    records = _records(payload, context, mapping)
    if not records:
        return ParsedCallback(error=f"no number found (looked for keys: {', '.join(mapping.number_keys)})")
    results: list[ParsedResult] = []
    for record in records:
        loose = _loose(record)  # once per record, not once per key looked up
        statuses = _found(loose, mapping.capability_keys)
        recognised = [(c, value) for value in statuses if (c := mapping.capability(value)) is not None]
        capable, status = recognised[0] if recognised else (None, next(iter(statuses), None))
        status = _text(status)
        request_id = _text(next(iter(_found(loose, mapping.request_id_keys)), None)) or None
        for number_raw in _split_numbers(_found(loose, mapping.number_keys)[0]):
            number = _callback_e164(number_raw, region)
            error = "not a valid phone number" if number is None else None
            if number and capable is None:
                error = "capability not recognised" if status is not None else "no capability field"
            results.append(ParsedResult(number_raw[:64], number, capable, status, request_id, error))
            if len(results) >= MAX_RESULTS:
                return ParsedCallback(tuple(results), error=f"more than {MAX_RESULTS} results; rest ignored")
    if not results:
        return ParsedCallback(error="number field is empty")
    errors = sorted({r.error for r in results if r.error})
    return ParsedCallback(tuple(results), error="; ".join(errors) or None)
