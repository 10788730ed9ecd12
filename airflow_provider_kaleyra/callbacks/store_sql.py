"""The SQL of the group commit's writes, run through the DBAPI cursor (see ``CallbackStore._write_batch``).

One multi-row statement for the callbacks of a batch (returning the ids of the new ones), one
for their results. SQLAlchemy Core cost more per batch (compiling, type processing, executemany)
than the database did; the tables themselves are defined once, in :mod:`.schema`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    sql: str  # with ``{values}`` where the rows' placeholders go
    width: int  # values per row
    time_column: int  # index of the row's ``received_at``


ROWS_PER_STATEMENT = 1000  # 9,000 parameters at most: under SQLite's 32,766 and PostgreSQL's 65,535
CALLBACKS = Insert(
    'INSERT INTO kaleyra_callbacks (dedupe_key, received_at, method, content_type, "query", headers,'
    " body, parse_error, result_count) VALUES {values}"
    " ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key, id",
    9,
    1,
)
# Results: an answer for a (number, request id) already stored replaces it (a re-delivery).
RESULTS = Insert(
    "INSERT INTO kaleyra_callback_results (callback_id, number, number_raw, capable, status,"
    " request_id, received_at, parse_error) VALUES {values}"
    " ON CONFLICT (number, request_id) DO UPDATE SET callback_id = excluded.callback_id,"
    " capable = excluded.capable, status = excluded.status, received_at = excluded.received_at,"
    " parse_error = excluded.parse_error",
    8,
    6,
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


def multi_row(dialect: str, statement: Insert, rows: Sequence[tuple[Any, ...]]) -> tuple[str, list]:
    """SQL and flat parameters of one ``INSERT ... VALUES (...), (...)`` for ``rows``."""
    sql, width, when = statement
    mark = PLACEHOLDER[dialect]  # other backends were refused when the schema was created
    group = "(" + ", ".join([mark] * width) + ")"
    params: list[Any] = []
    sqlite = dialect == "sqlite"
    for row in rows:
        params.extend(row)
        if sqlite:
            params[when - width] = sqlite_time(params[when - width])
    return sql.format(values=", ".join([group] * len(rows))), params
