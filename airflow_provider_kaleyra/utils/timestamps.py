"""The one timezone helper: every time the provider stores or compares is an aware UTC datetime."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime | str) -> datetime:
    """An aware UTC datetime from a datetime or ISO 8601 text; naive values are taken as UTC."""
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
