"""Durable store of SOIP callbacks (raw, and the per-number results read from them) and of the numbers
each check submitted, which the sensor and its trigger read from here, never from XCom."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import groupby, islice
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url

from airflow_provider_kaleyra.callbacks import store_sql as sql
from airflow_provider_kaleyra.callbacks.bodies import ParsedCallback, RawCallback, parse_callback
from airflow_provider_kaleyra.callbacks.store_sql import SCHEMA_VERSION
from airflow_provider_kaleyra.utils.database import Database, redact_url
from airflow_provider_kaleyra.utils.timestamps import as_utc

log = logging.getLogger(__name__)

CAPABLE = "capable"
NOT_CAPABLE = "not_capable"
UNPARSEABLE = "unparseable"
MISSING = "missing"


class CallbackStoreError(Exception):
    """The callback store cannot be used as configured."""


class SchemaVersionError(CallbackStoreError):
    """The database was written by a newer provider version: refuse rather than corrupt it."""


@dataclass(frozen=True)
class CallbackResult:
    """The latest answer received for one number."""

    number: str
    capable: bool | None
    status: str | None
    received_at: datetime
    request_id: str | None = None

    @property
    def outcome(self) -> str:
        """``capable``, ``not_capable``, or ``unparseable`` when a callback came but said nothing we read."""
        return UNPARSEABLE if self.capable is None else CAPABLE if self.capable else NOT_CAPABLE

    def as_dict(self) -> dict[str, Any]:
        answer = {"capable": self.capable, "status": self.status, "received_at": self.received_at.isoformat()}
        return {"outcome": self.outcome, **answer, "request_id": self.request_id}


class CallbackStore(Database):
    """Callbacks, their per-number results and the submitted numbers, in one database at ``url``
    (``sqlite:///path`` or ``postgresql+psycopg://...``)."""

    metadata = sql.metadata
    setting = "callback store URL"
    error = CallbackStoreError
    lock_key = 0x4B414C4559524131  # pg_advisory_xact_lock key for schema creation ("KALEYRA1")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._writer: Any = None  # the group commit's own connection (see add_callbacks)
        self._writer_lock = threading.Lock()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql`` (others are refused when the engine is created)."""
        return make_url(self.url).get_backend_name()

    def _prepare(self, conn: Connection) -> None:
        """The schema version: written on a new database, checked on an existing one."""
        found = conn.execute(select(func.max(sql.schema_version_table.c.version))).scalar()
        if found is None:
            conn.execute(sql.schema_version_table.insert().values(version=SCHEMA_VERSION))
        elif found > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"callback store {redact_url(self.url)} has schema version {found}, newer than"
                f" {SCHEMA_VERSION} (this provider's): upgrade the provider everywhere that uses this store"
            )

    def dispose(self) -> None:
        with self._writer_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        super().dispose()

    def add_callback(self, raw: RawCallback, parsed: ParsedCallback | None = None) -> bool:
        """Store one delivery; ``False`` when it was stored before (its ``received_at`` is refreshed)."""
        return self.add_callbacks([(raw, parsed if parsed is not None else parse_callback(raw))])[0]

    def add_callbacks(self, batch: Sequence[tuple[RawCallback, ParsedCallback]]) -> list[bool]:
        """Store many deliveries in ONE transaction; per delivery, new or not. On the writer's own DBAPI
        connection, kept between batches (cheaper than a pool checkout) and dropped on any error."""
        with self._writer_lock:
            if self._writer is None:
                self._writer = self.engine.raw_connection()
            dbapi, dialect = self._writer.driver_connection, self.engine.dialect.name
            try:
                cursor = dbapi.cursor()
                if dialect == "sqlite":  # the write lock up front, so writers queue (busy_timeout)
                    cursor.execute("BEGIN IMMEDIATE")
                plan, returned = sql.transaction(dialect, batch), None
                try:
                    while True:
                        statement, params, many = plan.send(returned)
                        (cursor.executemany if many else cursor.execute)(statement, params)
                        returned = cursor.fetchall() if cursor.description else None
                except StopIteration as done:
                    flags = done.value
                cursor.close()
                dbapi.commit()
            except BaseException:
                writer, self._writer = self._writer, None
                writer.invalidate()  # closed (its transaction with it), never reused
                raise
        return flags

    def purge(self, older_than: timedelta) -> int:
        """Delete callbacks (and submissions) older than ``now - older_than``; returns callbacks deleted."""
        if older_than.total_seconds() < 0:
            raise ValueError("older_than must not be negative")
        cutoff = datetime.now(UTC) - older_than
        c, r, s = sql.callbacks_table, sql.results_table, sql.submissions_table
        with self.write() as conn:
            conn.execute(delete(r).where(r.c.received_at < cutoff))
            deleted = conn.execute(delete(c).where(c.c.received_at < cutoff))
            conn.execute(delete(s).where(s.c.created_at < cutoff))
        count = deleted.rowcount or 0
        log.info("Purged %s Kaleyra callbacks received before %s", count, cutoff.isoformat())
        return count

    def add_submission(self, submission_id: str, numbers: Iterable[str]) -> int:
        """Record submitted numbers (E.164) under ``submission_id``; adding twice is harmless."""
        now, added = datetime.now(UTC), 0
        rows = ({"submission_id": submission_id, "number": n, "created_at": now} for n in numbers)
        with self.write() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            insert = dialect.insert(sql.submissions_table).on_conflict_do_nothing()
            while chunk := list(islice(rows, 5000)):
                conn.execute(insert, chunk)
                added += len(chunk)
        return added

    def submission_size(self, submission_id: str) -> int:
        s = sql.submissions_table
        return self._count(select(s).where(s.c.submission_id == submission_id))

    def count_answered(self, submission_id: str, since: datetime) -> int:
        """How many submitted numbers have a callback received at or after ``since``; one query."""
        s, r = sql.submissions_table, sql.results_table
        answered = select(r.c.id).where(r.c.number == s.c.number, r.c.received_at >= as_utc(since)).exists()
        return self._count(select(s.c.number).where(s.c.submission_id == submission_id, answered))

    def _count(self, query: Select) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(query.subquery())).scalar() or 0)

    def results(self, submission_id: str, since: datetime) -> Iterator[tuple[str, CallbackResult | None]]:
        """Every submitted number, in order, with its latest answer since ``since`` (``None``: no callback
        yet); a readable answer beats a later unreadable one (so it is ordered last). Streams."""
        s, r = sql.submissions_table, sql.results_table
        stmt = (
            select(s.c.number, r.c.capable, r.c.status, r.c.received_at, r.c.request_id)
            .select_from(s.outerjoin(r, (r.c.number == s.c.number) & (r.c.received_at >= as_utc(since))))
            .where(s.c.submission_id == submission_id)
            .order_by(s.c.number, r.c.capable.is_not(None), r.c.received_at, r.c.id)
        )
        with self.engine.connect() as conn:
            rows = conn.execution_options(yield_per=5000).execute(stmt)
            for number, answers in groupby(rows, key=lambda row: row.number):
                *_, (number, capable, status, at, request_id) = answers  # None when no callback came
                yield number, at and CallbackResult(number, capable, status, as_utc(at), request_id)


@functools.cache
def get_store(url: str) -> CallbackStore:
    """One store (one engine, one pool) per URL per process."""
    return CallbackStore(url)


MAX_BATCH = 1000  # callbacks per transaction: bounded so one commit never holds the lock for long


class GroupCommit:
    """Kaleyra sends one callback per number, and a transaction each would cap intake at the database's
    commit rate: the first request starts a write at once, requests arriving while it runs join the next.
    Each is answered once the transaction holding it committed; a failed one fails (503) all of them."""

    def __init__(self, store: CallbackStore) -> None:
        self.store = store
        self._pending: list[tuple[RawCallback, ParsedCallback, asyncio.Future[bool]]] = []
        self._task: asyncio.Task[None] | None = None  # the writer (the loop keeps only a weak reference)
        self._conn: Any = None  # PostgreSQL: the writer's async connection

    async def add(self, raw: RawCallback, parsed: ParsedCallback) -> bool:
        """Store one callback; returns once committed: ``True`` if new, ``False`` if delivered before."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((raw, parsed, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        # (no shield needed: the writer takes the callback from the queue whether or not anyone still waits)
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                outcomes: list[Any] = await self._write([(r, p) for r, p, _ in batch])
            except Exception as exc:
                outcomes = [exc] * len(batch)
            for (*_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():  # (its request may have gone)
                    (future.set_exception if isinstance(outcome, Exception) else future.set_result)(outcome)

    async def _write(self, items: list[tuple[RawCallback, ParsedCallback]]) -> list[bool]:
        """SQLite in a thread; PostgreSQL on the event loop (~20% more callbacks/s than a thread), on this
        writer's own autocommit connection, dropped on error. The batch is one statement; re-deliveries
        refresh their times in a second (should it fail, the batch's callbacks come back as duplicates)."""
        if self.store.dialect != "postgresql":
            return await asyncio.to_thread(self.store.add_callbacks, items)
        try:
            if self._conn is None:
                import psycopg

                engine = await asyncio.to_thread(lambda: self.store.engine)  # first use: creates the tables
                url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
                self._conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=30)
            async with self._conn.cursor() as cursor:
                plan, returned = sql.transaction("postgresql", items), None
                try:
                    while True:
                        statement, params, many = plan.send(returned)
                        await (cursor.executemany if many else cursor.execute)(statement, params)
                        returned = await cursor.fetchall() if cursor.description else None
                except StopIteration as done:
                    return done.value
        except BaseException:
            conn, self._conn = self._conn, None
            if conn is not None:
                with suppress(Exception):
                    await conn.close()
            raise
