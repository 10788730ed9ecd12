"""Durable store of SOIP callbacks: SQLite on one machine, PostgreSQL across hosts.

SQLAlchemy Core, one engine per URL per process (:func:`get_store`). Every callback is kept raw;
the numbers read from it go to a second table indexed on ``(number, received_at)`` so the sensor
can count 100k numbers cheaply. Tables are created on first use and the schema is versioned.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    create_engine,
    delete,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.types import TypeDecorator

from airflow_provider_kaleyra.callbacks.parsing import ParsedCallback, RawCallback, parse_callback

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHUNK = 900  # below SQLite's bound-parameter limit, small enough for PostgreSQL plans
_PG_LOCK_KEY = 0x4B414C4559524131  # pg_advisory_xact_lock key for schema creation ("KALEYRA1")

CAPABLE = "capable"
NOT_CAPABLE = "not_capable"
UNPARSEABLE = "unparseable"
MISSING = "missing"


class CallbackStoreError(Exception):
    """The callback store cannot be used as configured."""


class SchemaVersionError(CallbackStoreError):
    """The database was written by a newer provider version: refuse rather than corrupt it."""


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

watches_table = Table(
    "kaleyra_watches",
    metadata,
    Column("watch_id", String(64), primary_key=True),
    Column("number", String(20), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False, index=True),
)


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
        if self.capable is None:
            return UNPARSEABLE
        return CAPABLE if self.capable else NOT_CAPABLE

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "capable": self.capable,
            "status": self.status,
            "received_at": self.received_at.isoformat(),
            "request_id": self.request_id,
        }


def _chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def redact_url(url: str) -> str:
    """URLs can carry a database password; messages never do."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable store URL>"


class CallbackStore:
    """Callbacks and their per-number results in one database.

    :param url: SQLAlchemy URL, ``sqlite:///path`` or ``postgresql+psycopg://...``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._ready = False

    def __repr__(self) -> str:
        return f"CallbackStore({redact_url(self.url)!r})"

    # -- engine and schema ---------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """Created on first use, tables included; no connection is made before that."""
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self._engine = self._engine or self._create_engine()
                    self._ensure_schema(self._engine)
                    self._ready = True
        assert self._engine is not None
        return self._engine

    def _create_engine(self) -> Engine:
        try:
            url = make_url(self.url)
        except Exception as exc:
            raise CallbackStoreError(f"invalid callback store URL {redact_url(self.url)}: {exc}") from None
        if url.get_backend_name() == "sqlite":
            if url.database and url.database != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
            _sqlite_setup(engine)
            return engine
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)

    def _ensure_schema(self, engine: Engine) -> None:
        with self._write(engine) as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            metadata.create_all(conn, checkfirst=True)
            found = conn.execute(select(func.max(schema_version_table.c.version))).scalar()
            if found is None:
                conn.execute(schema_version_table.insert().values(version=SCHEMA_VERSION))
            elif found > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"callback store {redact_url(self.url)} has schema version {found}, newer than "
                    f"{SCHEMA_VERSION} which this airflow-provider-kaleyra understands: upgrade the "
                    "provider everywhere that uses this store"
                )

    def _write(self, engine: Engine | None = None) -> Any:
        """A transaction that takes SQLite's write lock up front, so concurrent writers wait, not fail."""
        engine = engine or self.engine
        conn = engine.connect().execution_options(kaleyra_write=True)
        return _Tx(conn)

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(schema_version_table.c.version))).scalar() or 0)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    # -- writing -------------------------------------------------------------------------------

    def add_callback(self, raw: RawCallback, parsed: ParsedCallback | None = None) -> bool:
        """Store one delivery and its results; ``False`` when the same delivery was stored before.

        :param raw: the delivery as received.
        :param parsed: its reading; parsed here with the default mapping when not given.
        """
        parsed = parsed if parsed is not None else parse_callback(raw)
        received_at = _utc(raw.received_at)
        with self._write() as conn:
            callback_id = conn.execute(
                _insert_ignore(conn, callbacks_table, ["dedupe_key"])
                .values(
                    dedupe_key=raw.dedupe_key,
                    received_at=received_at,
                    method=raw.method.upper()[:8],
                    content_type=(raw.content_type or None) and raw.content_type[:255],
                    query=raw.query,
                    headers=json.dumps(dict(raw.headers), sort_keys=True),
                    body=raw.body,
                    parse_error=parsed.error,
                    result_count=len(parsed.results),
                )
                .returning(callbacks_table.c.id)
            ).scalar()
            if callback_id is None:
                return False
            rows = [
                {
                    "callback_id": callback_id,
                    "number": r.number,
                    "number_raw": r.number_raw,
                    "capable": r.capable,
                    "status": r.status,
                    "request_id": r.request_id,
                    "received_at": received_at,
                    "parse_error": r.error,
                }
                for r in parsed.results
            ]
            for start in range(0, len(rows), 1000):
                conn.execute(_insert_ignore(conn, results_table, None), rows[start : start + 1000])
        return True

    def purge(self, older_than: timedelta) -> int:
        """Delete callbacks (and watches) received before ``now - older_than``; returns callbacks deleted."""
        if older_than.total_seconds() < 0:
            raise ValueError("older_than must not be negative")
        cutoff = datetime.now(UTC) - older_than
        with self._write() as conn:
            conn.execute(delete(results_table).where(results_table.c.received_at < cutoff))
            deleted = conn.execute(delete(callbacks_table).where(callbacks_table.c.received_at < cutoff))
            conn.execute(delete(watches_table).where(watches_table.c.created_at < cutoff))
        count = deleted.rowcount or 0
        log.info("Purged %s Kaleyra callbacks received before %s", count, cutoff.isoformat())
        return count

    # -- watches: the set of numbers a deferred sensor waits for, kept out of trigger kwargs --

    def register_watch(self, numbers: Iterable[str]) -> str:
        """Record the numbers a sensor waits for; returns an id the trigger can count against."""
        watch_id = uuid.uuid4().hex
        now = datetime.now(UTC)
        rows = [{"watch_id": watch_id, "number": n, "created_at": now} for n in dict.fromkeys(numbers)]
        with self._write() as conn:
            for start in range(0, len(rows), 5000):
                conn.execute(watches_table.insert(), rows[start : start + 5000])
        return watch_id

    def drop_watch(self, watch_id: str) -> None:
        with self._write() as conn:
            conn.execute(delete(watches_table).where(watches_table.c.watch_id == watch_id))

    def count_answered_watch(self, watch_id: str, since: datetime) -> int:
        """How many of the watched numbers have a callback received at or after ``since``; one query."""
        r = results_table
        answered = (
            select(watches_table.c.number)
            .where(watches_table.c.watch_id == watch_id)
            .where(
                select(r.c.id)
                .where(r.c.number == watches_table.c.number, r.c.received_at >= _utc(since))
                .exists()
            )
        )
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(answered.subquery())).scalar() or 0)

    # -- reading -------------------------------------------------------------------------------

    def count_answered(self, numbers: Sequence[str], since: datetime) -> int:
        """How many of ``numbers`` (E.164) have a callback received at or after ``since``."""
        r = results_table
        total = 0
        unique = list(dict.fromkeys(numbers))
        with self.engine.connect() as conn:
            for chunk in _chunks(unique):
                stmt = select(func.count(func.distinct(r.c.number))).where(
                    r.c.number.in_(chunk), r.c.received_at >= _utc(since)
                )
                total += int(conn.execute(stmt).scalar() or 0)
        return total

    def results_for(self, numbers: Sequence[str], since: datetime) -> dict[str, CallbackResult]:
        """Latest answer per number since ``since``; a readable answer beats a later unreadable one."""
        r = results_table
        found: dict[str, CallbackResult] = {}
        unique = list(dict.fromkeys(numbers))
        with self.engine.connect() as conn:
            for chunk in _chunks(unique):
                stmt = (
                    select(r.c.number, r.c.capable, r.c.status, r.c.received_at, r.c.request_id)
                    .where(r.c.number.in_(chunk), r.c.received_at >= _utc(since))
                    .order_by(r.c.received_at, r.c.id)
                )
                for row in conn.execute(stmt):
                    previous = found.get(row.number)
                    if previous is not None and previous.capable is not None and row.capable is None:
                        continue
                    found[row.number] = CallbackResult(
                        row.number, row.capable, row.status, row.received_at, row.request_id
                    )
        return found

    def callbacks(self, limit: int = 100) -> list[dict[str, Any]]:
        """Latest raw callbacks, newest first: for inspection and re-parsing."""
        c = callbacks_table
        with self.engine.connect() as conn:
            rows = conn.execute(select(c).order_by(c.c.id.desc()).limit(limit)).mappings().all()
        return [dict(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Rows per table, cheap enough for health checks and tests."""
        with self.engine.connect() as conn:
            return {
                "callbacks": int(conn.execute(select(func.count()).select_from(callbacks_table)).scalar()),
                "results": int(conn.execute(select(func.count()).select_from(results_table)).scalar()),
                "parse_errors": int(
                    conn.execute(
                        select(func.count())
                        .select_from(callbacks_table)
                        .where(callbacks_table.c.parse_error.is_not(None))
                    ).scalar()
                ),
            }


class _Tx:
    """``with`` block: commit on success, roll back on error, always close."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def __enter__(self) -> Connection:
        self.conn.begin()
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self.conn.commit()
            else:
                self.conn.rollback()
        finally:
            self.conn.close()


def _insert_ignore(conn: Connection, table: Table, conflict_columns: list[str] | None) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the dialect at hand."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise CallbackStoreError(f"unsupported callback store backend {conn.dialect.name!r}")
    return insert(table).on_conflict_do_nothing(index_elements=conflict_columns)


def _sqlite_setup(engine: Engine) -> None:
    """WAL lets readers run beside a writer; busy_timeout and BEGIN IMMEDIATE make writers queue."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("kaleyra_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


_stores: dict[str, CallbackStore] = {}
_stores_lock = threading.Lock()


def get_store(url: str) -> CallbackStore:
    """One store (one engine, one pool) per URL per process."""
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = CallbackStore(url)
        return store
