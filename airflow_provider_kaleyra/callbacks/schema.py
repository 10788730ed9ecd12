"""The callback store's tables: raw callbacks, the per-number results read from them, submissions.

Results are indexed on ``(number, received_at)`` so the sensor counts 100k numbers in one query;
``(number, request_id)`` is unique, so a re-delivered answer replaces the stored one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

SCHEMA_VERSION = 1


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in and out, on SQLite (naive text) as on PostgreSQL (timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only

metadata = MetaData()

schema_version_table = Table(
    "kaleyra_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
)

callbacks_table = Table(
    "kaleyra_callbacks",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(64), nullable=False, unique=True),
    Column("received_at", UTCDateTime, nullable=False, index=True),
    Column("method", String(8), nullable=False),
    Column("content_type", String(255)),
    Column("query", Text, nullable=False, default=""),
    Column("headers", Text, nullable=False, default="{}"),
    Column("body", LargeBinary, nullable=False),
    Column("parse_error", Text),
    Column("result_count", Integer, nullable=False, default=0),
)

results_table = Table(
    "kaleyra_callback_results",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column(
        "callback_id",
        _ID,
        ForeignKey("kaleyra_callbacks.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("number", String(20)),
    Column("number_raw", String(64), nullable=False),
    Column("capable", Boolean),
    Column("status", String(256)),
    Column("request_id", String(256)),
    Column("received_at", UTCDateTime, nullable=False),
    Column("parse_error", Text),
    # NULL request ids are distinct on both backends, so this only bites when an id is present.
    UniqueConstraint("number", "request_id", name="uq_kaleyra_result_number_request"),
    Index("ix_kaleyra_result_number_received", "number", "received_at"),
)

submissions_table = Table(
    "kaleyra_submissions",
    metadata,
    Column("submission_id", String(64), primary_key=True),
    Column("number", String(20), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False, index=True),
)
