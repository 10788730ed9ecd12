"""The SQL of the group commit's writes, run through the DBAPI cursor (see :func:`transaction`).

A batch of callbacks is one statement on PostgreSQL (the callbacks, their results and the ids,
in one round trip: the fixed cost of a round trip was most of a small batch's cost) and two
multi-row statements on SQLite (one per 1,000 rows). SQLAlchemy Core cost more per batch
(compiling, type processing, executemany) than the database did; the tables themselves are
defined once, in :mod:`.schema`.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from datetime import datetime
from typing import Any

from airflow_provider_kaleyra.callbacks.parsing import ParsedCallback, RawCallback
from airflow_provider_kaleyra.utils.timestamps import as_utc


def callback_row(raw: RawCallback, parsed: ParsedCallback) -> tuple[Any, ...]:
    """Values in the order of ``CALLBACK_COLUMNS``."""
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
    """SQLite: result rows of the newly stored deliveries; one per (number, request id) when an id is given.

    (On PostgreSQL the statement itself joins the results to the callbacks it inserted.)
    """
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


CALLBACK_COLUMNS = (  # (column, PostgreSQL type of its values)
    ("dedupe_key", "text"),
    ("received_at", "timestamptz"),
    ("method", "text"),
    ("content_type", "text"),
    ('"query"', "text"),
    ("headers", "text"),
    ("body", "bytea"),
    ("parse_error", "text"),
    ("result_count", "int"),
)
RESULT_COLUMNS = (
    ("callback_id", "bigint"),
    ("number", "text"),
    ("number_raw", "text"),
    ("capable", "boolean"),
    ("status", "text"),
    ("request_id", "text"),
    ("received_at", "timestamptz"),
    ("parse_error", "text"),
)
_NEW_CALLBACKS = "ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key, id"
# An answer for a (number, request id) already stored replaces it (a re-delivery).
_NEWER_ANSWER = (
    "ON CONFLICT (number, request_id) DO UPDATE SET callback_id = excluded.callback_id,"
    " capable = excluded.capable, status = excluded.status, received_at = excluded.received_at,"
    " parse_error = excluded.parse_error"
)


def _names(columns: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(name for name, _ in columns)


def _arrays(columns: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"%b::{kind}[]" for _, kind in columns)


_RESULT_VALUES = RESULT_COLUMNS[1:]  # a result's own values; its callback is found by dedupe key
# PostgreSQL: one array per column, so the text never changes (psycopg parses it once and the server
# prepares it), and the results join the callbacks inserted by the same statement. Within a batch the
# last answer for a (number, request id) wins: a statement may not update one row twice.
POSTGRES_BATCH = (
    f"WITH new AS (INSERT INTO kaleyra_callbacks ({_names(CALLBACK_COLUMNS)})"
    f" SELECT * FROM unnest({_arrays(CALLBACK_COLUMNS)}) {_NEW_CALLBACKS}),"
    f" answers AS (SELECT new.id AS callback_id, r.*, row_number() OVER"
    f" (PARTITION BY r.number, r.request_id ORDER BY r.position DESC) AS nth"
    f" FROM unnest(%b::text[], {_arrays(_RESULT_VALUES)}) WITH ORDINALITY"
    f" AS r(dedupe_key, {_names(_RESULT_VALUES)}, position) JOIN new ON new.dedupe_key = r.dedupe_key),"
    f" stored AS (INSERT INTO kaleyra_callback_results ({_names(RESULT_COLUMNS)})"
    f" SELECT {_names(RESULT_COLUMNS)} FROM answers"
    f" WHERE nth = 1 OR request_id IS NULL OR number IS NULL {_NEWER_ANSWER})"
    " SELECT dedupe_key, id FROM new"
)
ROWS_PER_STATEMENT = 1000  # SQLite: 9,000 parameters at most, under its limit of 32,766
REFRESH_CALLBACK = "UPDATE kaleyra_callbacks SET received_at = ? WHERE dedupe_key = ?"
REFRESH_RESULTS = (
    "UPDATE kaleyra_callback_results SET received_at = ?"
    " WHERE callback_id = (SELECT id FROM kaleyra_callbacks WHERE dedupe_key = ?)"
)
PLACEHOLDER = {"sqlite": "?", "postgresql": "%s"}


def sqlite_time(at: datetime) -> str:
    """The text SQLAlchemy's ``DateTime`` stores on SQLite (UTC, naive), so its reads parse ours."""
    return f"{at:%Y-%m-%d %H:%M:%S.%f}"


def _sqlite_inserts(
    table: str, columns: tuple[tuple[str, str], ...], tail: str, rows: Sequence[tuple[Any, ...]]
) -> Generator[tuple[str, list[Any]], None, None]:
    """SQLite binds ``?`` natively: ``VALUES`` rows, 1,000 a statement, the time in SQLite's text form."""
    width, when = len(columns), [name for name, _ in columns].index("received_at")
    group = "(" + ", ".join(["?"] * width) + ")"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        params: list[Any] = []
        for row in chunk:
            params.extend(row)
            params[when - width] = sqlite_time(params[when - width])
        yield (
            f"INSERT INTO {table} ({_names(columns)}) VALUES {', '.join([group] * len(chunk))} {tail}",
            params,
        )


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


# A statement to run: (SQL, parameters, run once per parameter set instead of once).
Statement = tuple[str, Any, bool]


def transaction(
    dialect: str, batch: Sequence[tuple[RawCallback, ParsedCallback]]
) -> Generator[Statement, list[tuple[Any, ...]] | None, list[bool]]:
    """The statements storing ``batch``; returns, per delivery, whether it is new.

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
    if dialect == "postgresql":
        answers = [
            (
                key,
                r.number,
                r.number_raw,
                r.capable,
                r.status,
                r.request_id,
                as_utc(batch[i][0].received_at),
                r.error,
            )
            for key, i in first.items()
            for r in batch[i][1].results
        ]
        params = _columns(rows, len(CALLBACK_COLUMNS)) + _columns(answers, len(RESULT_COLUMNS))
        inserted.update((yield POSTGRES_BATCH, params, False) or ())
    else:
        for statement, params in _sqlite_inserts("kaleyra_callbacks", CALLBACK_COLUMNS, _NEW_CALLBACKS, rows):
            inserted.update((yield statement, params, False) or ())
        answers = result_rows(batch, first, inserted)
        for statement, params in _sqlite_inserts(
            "kaleyra_callback_results", RESULT_COLUMNS, _NEWER_ANSWER, answers
        ):
            yield statement, params, False
    again = [(row[1], row[0]) for row in rows if row[0] not in inserted]
    if again:  # re-deliveries: the stored callback and its results take the new time
        mark = PLACEHOLDER[dialect]
        if dialect == "sqlite":
            again = [(sqlite_time(at), key) for at, key in again]
        yield REFRESH_CALLBACK.replace("?", mark), again, True
        yield REFRESH_RESULTS.replace("?", mark), again, True
    return [keys[index] in inserted and first[keys[index]] == index for index in range(len(batch))]
