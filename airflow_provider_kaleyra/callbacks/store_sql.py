"""The callback store's tables, and the SQL writing a batch of callbacks: plain SQL on the DBAPI cursor
(SQLAlchemy Core cost more per batch than the database did). A re-delivered answer replaces the stored
one: ``(number, request_id)`` is unique."""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from airflow_provider_kaleyra.callbacks.bodies import ParsedCallback, RawCallback
from airflow_provider_kaleyra.utils.timestamps import as_utc

SCHEMA_VERSION = 1


_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only
# Times are written in UTC (timestamptz; on SQLite naive text, :func:`sqlite_time`) and read with ``as_utc``.
_TIME = sa.DateTime(timezone=True)

metadata = sa.MetaData()

schema_version_table = sa.Table(
    "kaleyra_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
)

callbacks_table = sa.Table(
    "kaleyra_callbacks",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("dedupe_key", sa.String(64), nullable=False, unique=True),
    sa.Column("received_at", _TIME, nullable=False, index=True),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("content_type", sa.String(255)),
    sa.Column("query", sa.Text, nullable=False, default=""),
    sa.Column("headers", sa.Text, nullable=False, default="{}"),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("parse_error", sa.Text),
    sa.Column("result_count", sa.Integer, nullable=False, default=0),
)

results_table = sa.Table(
    "kaleyra_callback_results",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("callback_id", _ID, sa.ForeignKey(callbacks_table.c.id, ondelete="CASCADE"), nullable=False),
    sa.Column("number", sa.String(20)),
    sa.Column("number_raw", sa.String(64), nullable=False),
    sa.Column("capable", sa.Boolean),
    sa.Column("status", sa.String(256)),
    sa.Column("request_id", sa.String(256)),
    sa.Column("received_at", _TIME, nullable=False),
    sa.Column("parse_error", sa.Text),
    # NULL request ids are distinct on both backends, so this only bites when an id is present.
    sa.UniqueConstraint("number", "request_id", name="uq_kaleyra_result_number_request"),
    sa.Index("ix_kaleyra_result_number_received", "number", "received_at"),
    sa.Index("ix_kaleyra_callback_results_callback_id", "callback_id"),
)

submissions_table = sa.Table(
    "kaleyra_submissions",
    metadata,
    sa.Column("submission_id", sa.String(64), primary_key=True),
    sa.Column("number", sa.String(20), primary_key=True),
    sa.Column("created_at", _TIME, nullable=False, index=True),
)

# The columns a write fills (all but the ids), in the tables' order: the rows below follow it.
_CALLBACK_COLUMNS = [c for c in callbacks_table.c if c.name != "id"]
_RESULT_COLUMNS = [c for c in results_table.c if c.name != "id"]


def _names(columns: Sequence[sa.Column]) -> str:
    return ", ".join(f'"{c.name}"' for c in columns)


def _arrays(columns: Sequence[sa.Column]) -> str:
    """PostgreSQL: one array parameter per column, of the column's type (lengths are not casts)."""
    return ", ".join(f"%b::{c.type.compile(dialect=postgresql.dialect()).split('(')[0]}[]" for c in columns)


_NEW_CALLBACKS = "ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key, id"
# An answer for a (number, request id) already stored replaces it (a re-delivery).
_NEWER_ANSWER = "ON CONFLICT (number, request_id) DO UPDATE SET " + ", ".join(
    f"{name} = excluded.{name}" for name in ("callback_id", "capable", "status", "received_at", "parse_error")
)
_ANSWER_VALUES = _RESULT_COLUMNS[1:]  # a result's own values; its callback is found by dedupe key
# PostgreSQL: the text never changes (psycopg parses it once and the server prepares it), and the
# results join the callbacks inserted by the same statement. Within a batch the last answer for a
# (number, request id) wins: a statement may not update one row twice.
POSTGRES_BATCH = (
    f"WITH new AS (INSERT INTO kaleyra_callbacks ({_names(_CALLBACK_COLUMNS)})"
    f" SELECT * FROM unnest({_arrays(_CALLBACK_COLUMNS)}) {_NEW_CALLBACKS}),"
    " answers AS (SELECT new.id AS callback_id, r.*, row_number() OVER"
    " (PARTITION BY r.number, r.request_id ORDER BY r.position DESC) AS nth"
    f" FROM unnest(%b::text[], {_arrays(_ANSWER_VALUES)}) WITH ORDINALITY"
    f" AS r(dedupe_key, {_names(_ANSWER_VALUES)}, position) JOIN new ON new.dedupe_key = r.dedupe_key),"
    f" stored AS (INSERT INTO kaleyra_callback_results ({_names(_RESULT_COLUMNS)})"
    f" SELECT {_names(_RESULT_COLUMNS)} FROM answers"
    f" WHERE nth = 1 OR request_id IS NULL OR number IS NULL {_NEWER_ANSWER})"
    " SELECT dedupe_key, id FROM new"
)
ROWS_PER_STATEMENT = 1000  # SQLite: 9,000 parameters at most, under its limit of 32,766
REFRESH_CALLBACK = "UPDATE kaleyra_callbacks SET received_at = ? WHERE dedupe_key = ?"
REFRESH_RESULTS = (
    "UPDATE kaleyra_callback_results SET received_at = ?"
    " WHERE callback_id = (SELECT id FROM kaleyra_callbacks WHERE dedupe_key = ?)"
)


def sqlite_time(at: datetime) -> str:
    """The text SQLAlchemy's ``DateTime`` stores on SQLite (UTC, naive), so its reads parse ours."""
    return f"{as_utc(at):%Y-%m-%d %H:%M:%S.%f}"


def _sqlite_inserts(
    columns: Sequence[sa.Column], tail: str, rows: Sequence[tuple[Any, ...]]
) -> Generator[tuple[str, list[Any]], None, None]:
    """SQLite binds ``?`` natively: ``VALUES`` rows, :data:`ROWS_PER_STATEMENT` a statement."""
    insert = f"INSERT INTO {columns[0].table.name} ({_names(columns)}) VALUES"
    group = f"({', '.join('?' * len(columns))})"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        yield f"{insert} {', '.join([group] * len(chunk))} {tail}", [v for row in chunk for v in row]


def _by_column(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


def transaction(
    dialect: str, batch: Sequence[tuple[RawCallback, ParsedCallback]]
) -> Generator[tuple[str, Any, bool], list[tuple[Any, ...]] | None, list[bool]]:
    """The statements storing ``batch`` as (SQL, parameters, once per parameter set?), each sent the rows
    the previous one returned (a thread and an event loop drive the same plan); returns, per delivery,
    whether it is new. A re-delivery takes the new time, with its results: it answers a newer submission."""
    when = sqlite_time if dialect == "sqlite" else as_utc
    keys = [raw.dedupe_key for raw, _ in batch]
    first: dict[str, int] = {}
    for index, key in enumerate(keys):
        first.setdefault(key, index)
    rows, answers = [], []
    for key, index in first.items():
        raw, parsed = batch[index]
        at = when(raw.received_at)
        content_type = (raw.content_type or None) and raw.content_type[:255]
        headers = json.dumps(dict(raw.headers), sort_keys=True)
        method, count = raw.method.upper()[:8], len(parsed.results)
        rows.append((key, at, method, content_type, raw.query, headers, raw.body, parsed.error, count))
        answers += [
            (key, r.number, r.number_raw, r.capable, r.status, r.request_id, at, r.error)
            for r in parsed.results
        ]
    inserted: dict[str, int] = {}
    if dialect == "postgresql":
        params = _by_column(rows, len(_CALLBACK_COLUMNS)) + _by_column(answers, len(_RESULT_COLUMNS))
        inserted.update((yield POSTGRES_BATCH, params, False) or ())
    else:
        for statement, params in _sqlite_inserts(_CALLBACK_COLUMNS, _NEW_CALLBACKS, rows):
            inserted.update((yield statement, params, False) or ())
        # SQLite applies a statement's rows in order: the last answer for a (number, request id) wins
        results = [(inserted[key], *rest) for key, *rest in answers if key in inserted]
        for statement, params in _sqlite_inserts(_RESULT_COLUMNS, _NEWER_ANSWER, results):
            yield statement, params, False
    again = [(row[1], row[0]) for row in rows if row[0] not in inserted]
    if again:  # re-deliveries: the stored callback and its results take the new time
        mark = "?" if dialect == "sqlite" else "%s"
        yield REFRESH_CALLBACK.replace("?", mark), again, True
        yield REFRESH_RESULTS.replace("?", mark), again, True
    return [keys[index] in inserted and first[keys[index]] == index for index in range(len(batch))]
