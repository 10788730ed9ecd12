"""Tolerant reading of SOIP callbacks, whose payload format Kaleyra does not publish: what cannot be
read becomes a ``parse_error`` (never an exception), and the raw callback is kept to re-read later."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from airflow_provider_kaleyra.callbacks.bodies import (
    RawCallback,
    RefusedBody,
    decode_payload,
    loose_key as _key,
    unescape,
)
from airflow_provider_kaleyra.client.api import e164_key
from airflow_provider_kaleyra.numbers.normalize import normalize

MAX_DEPTH = 6
MAX_RESULTS = 50_000


def _values(items: Iterable[str]) -> frozenset[str]:
    return frozenset(_key(v) for v in items)


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
        data, known = data or {}, {f.name for f in fields(cls)} | set(_SHORTHANDS)
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
        text = _key(unescape(value)) if isinstance(value, str) else None
        return True if text in self.capable_values else False if text in self.not_capable_values else None


_SHORTHANDS = {"number": "number_keys", "status": "capability_keys", "request_id": "request_id_keys"}


def _loose(record: Mapping[str, Any]) -> dict[str, Any]:
    return {_key(k): v for k, v in record.items() if isinstance(k, str)}


def _found(loose: dict[str, Any], keys: Iterable[str]) -> list[Any]:
    """The values under ``keys`` (loosely), in the keys' order."""
    return [loose[k] for k in map(_key, keys) if k in loose]


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
    if isinstance(value, bool):
        return "true" if value else "false"
    return unescape(str(value))[:256]


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
