"""Queries tests make of the callback store; the provider itself never needs them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from airflow_provider_kaleyra.callbacks.store import CallbackResult, CallbackStore
from airflow_provider_kaleyra.callbacks.store_sql import callbacks_table, results_table, schema_version_table


def counts(store: CallbackStore) -> dict[str, int]:
    """Rows per table, and callbacks flagged with a parse error."""
    with store.engine.connect() as conn:
        return {
            "callbacks": int(conn.execute(select(func.count()).select_from(callbacks_table)).scalar() or 0),
            "results": int(conn.execute(select(func.count()).select_from(results_table)).scalar() or 0),
            "parse_errors": int(
                conn.execute(
                    select(func.count())
                    .select_from(callbacks_table)
                    .where(callbacks_table.c.parse_error.is_not(None))
                ).scalar()
                or 0
            ),
        }


def raw_callbacks(store: CallbackStore, limit: int = 100) -> list[dict[str, Any]]:
    """Stored deliveries, newest first."""
    c = callbacks_table
    with store.engine.connect() as conn:
        rows = conn.execute(select(c).order_by(c.c.id.desc()).limit(limit)).mappings().all()
    return [dict(row) for row in rows]


def schema_version(store: CallbackStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.max(schema_version_table.c.version))).scalar() or 0)


def results_for(store: CallbackStore, numbers: list[str], since: datetime) -> dict[str, CallbackResult]:
    """The answered numbers among ``numbers``, through a submission as the sensor reads them."""
    submission = uuid.uuid4().hex
    store.add_submission(submission, numbers)
    return {number: result for number, result in store.results(submission, since) if result}


def count_answered(store: CallbackStore, numbers: list[str], since: datetime) -> int:
    submission = uuid.uuid4().hex
    store.add_submission(submission, numbers)
    return store.count_answered(submission, since)
