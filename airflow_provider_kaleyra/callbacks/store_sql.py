"""The SQL of the group commit's writes, run through the DBAPI cursor (see ``CallbackStore._write_batch``).

One multi-row statement for the callbacks of a batch (returning the ids of the new ones), one
for their results (on SQLite, one per 1,000 rows). SQLAlchemy Core cost more per batch (compiling, type processing, executemany)
than the database did; the tables themselves are defined once, in :mod:`.schema`.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from airflow_provider_kaleyra.callbacks.parsing import ParsedCallback, RawCallback
from airflow_provider_kaleyra.utils.timestamps import as_utc


def callback_row(raw: RawCallback, parsed: ParsedCallback) -> tuple[Any, ...]:
    """Values in the order of ``CALLBACKS`` (SQLite's text form of the time: see ``multi_row``)."""
    return (
        raw.dedupe_key,
        as_utc(raw.received_at),
        raw.method.upper()[:8],
        (raw.content_type or None) and raw.content_type[:255],
        raw.query,
        json.dumps(dict(raw.headers), sort_keys=True),
        raw.body,
        parsed.error,
        len(parsed.results),
    )


def result_rows(
    batch: Sequence[tuple[RawCallback, ParsedCallback]], first: dict[str, int], inserted: dict[str, int]
) -> list[tuple[Any, ...]]:
    """Result rows of the newly stored deliveries; one per (number, request id) when an id is given."""
    rows: dict[Any, tuple[Any, ...]] = {}
    for key, index in first.items():
        callback_id = inserted.get(key)
        if callback_id is None:
            continue
        raw, parsed = batch[index]
        at = as_utc(raw.received_at)
        for r in parsed.results:
            row = (callback_id, r.number, r.number_raw, r.capable, r.status, r.request_id, at, r.error)
            # a statement may not update one row twice: the last answer for an id wins
            unique = (r.number, r.request_id) if r.request_id is not None and r.number else len(rows)
            rows.pop(unique, None)
            rows[unique] = row
    return list(rows.values())


class Insert(NamedTuple):
    """One multi-row ``INSERT``: its table, its columns (with their PostgreSQL types) and its tail."""

    table: str
    columns: tuple[tuple[str, str], ...]  # (name, PostgreSQL type of the values)
    tail: str  # ON CONFLICT ... / RETURNING ...

    @property
    def time_column(self) -> int:
        return [name for name, _ in self.columns].index("received_at")


ROWS_PER_STATEMENT = 1000  # SQLite: 9,000 parameters at most, under its limit of 32,766
CALLBACKS = Insert(
    "kaleyra_callbacks",
    (
        ("dedupe_key", "text"),
        ("received_at", "timestamptz"),
        ("method", "text"),
        ("content_type", "text"),
        ('"query"', "text"),
        ("headers", "text"),
        ("body", "bytea"),
        ("parse_error", "text"),
        ("result_count", "int"),
    ),
    "ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key, id",
)
# Results: an answer for a (number, request id) already stored replaces it (a re-delivery).
RESULTS = Insert(
    "kaleyra_callback_results",
    (
        ("callback_id", "bigint"),
        ("number", "text"),
        ("number_raw", "text"),
        ("capable", "boolean"),
        ("status", "text"),
        ("request_id", "text"),
        ("received_at", "timestamptz"),
        ("parse_error", "text"),
    ),
    "ON CONFLICT (number, request_id) DO UPDATE SET callback_id = excluded.callback_id,"
    " capable = excluded.capable, status = excluded.status, received_at = excluded.received_at,"
    " parse_error = excluded.parse_error",
)
REFRESH_CALLBACK = "UPDATE kaleyra_callbacks SET received_at = ? WHERE dedupe_key = ?"
REFRESH_RESULTS = (
    "UPDATE kaleyra_callback_results SET received_at = ?"
    " WHERE callback_id = (SELECT id FROM kaleyra_callbacks WHERE dedupe_key = ?)"
)
PLACEHOLDER = {"sqlite": "?", "postgresql": "%s"}


def sqlite_time(at: datetime) -> str:
    """The text SQLAlchemy's ``DateTime`` stores on SQLite (UTC, naive), so its reads parse ours."""
    return f"{at:%Y-%m-%d %H:%M:%S.%f}"


def inserts(dialect: str, statement: Insert, rows: Sequence[tuple[Any, ...]]) -> Iterator[tuple[str, list]]:
    """SQL and parameters of the statements inserting ``rows``.

    PostgreSQL gets one array per column (``SELECT * FROM unnest(...)``): the text never changes,
    so psycopg parses it once and the server prepares it, where ``VALUES (...), (...)`` was a new
    statement for every batch size and cost more CPU to parse than the database spent on it.
    SQLite binds ``?`` natively: ``VALUES`` rows, with its text form of the time.
    """
    if not rows:
        return
    names = ", ".join(name for name, _ in statement.columns)
    head = f"INSERT INTO {statement.table} ({names}) "
    if dialect == "postgresql":
        arrays = ", ".join(f"%b::{kind}[]" for _, kind in statement.columns)
        yield f"{head}SELECT * FROM unnest({arrays}) {statement.tail}", [list(c) for c in zip(*rows)]
        return
    width, when = len(statement.columns), statement.time_column
    group = "(" + ", ".join(["?"] * width) + ")"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        params: list[Any] = []
        for row in chunk:
            params.extend(row)
            params[when - width] = sqlite_time(params[when - width])
        yield f"{head}VALUES {', '.join([group] * len(chunk))} {statement.tail}", params


# A statement of a transaction: (SQL, parameters, run once per parameter set instead of once).
Statement = tuple[str, Any, bool]


def transaction(
    dialect: str, batch: Sequence[tuple[RawCallback, ParsedCallback]]
) -> Generator[Statement, list[tuple[Any, ...]] | None, list[bool]]:
    """The statements storing ``batch`` in one transaction; returns, per delivery, whether it is new.

    A driver runs each statement it is given and sends back the rows it returned: the receiver's
    thread (SQLite) and its event loop (PostgreSQL) run the same plan.
    A delivery seen before (same dedupe key) is not stored twice, but its time and its results'
    times move to the new delivery's: Kaleyra re-delivering a callback after a new submission of
    the same number answers that submission too.
    """
    keys = [raw.dedupe_key for raw, _ in batch]
    first: dict[str, int] = {}
    for index, key in enumerate(keys):
        first.setdefault(key, index)
    rows = [callback_row(*batch[index]) for index in first.values()]
    inserted: dict[str, int] = {}
    for statement, params in inserts(dialect, CALLBACKS, rows):
        inserted.update((yield statement, params, False) or ())
    for statement, params in inserts(dialect, RESULTS, result_rows(batch, first, inserted)):
        yield statement, params, False
    again = [(row[1], row[0]) for row in rows if row[0] not in inserted]
    if again:  # re-deliveries: the stored callback and its results take the new time
        mark = PLACEHOLDER[dialect]
        if dialect == "sqlite":
            again = [(sqlite_time(at), key) for at, key in again]
        yield REFRESH_CALLBACK.replace("?", mark), again, True
        yield REFRESH_RESULTS.replace("?", mark), again, True
    return [keys[index] in inserted and first[keys[index]] == index for index in range(len(batch))]
