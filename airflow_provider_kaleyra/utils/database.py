"""The one way the provider opens a database of its own (callback store, capability cache).

Both live in a database every component of a deployment reaches: PostgreSQL across hosts, or a
SQLite file on one machine when a user names one. Nothing else is supported, since both need
``INSERT ... ON CONFLICT`` in one of those two dialects.
"""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url


def redact_url(url: str) -> str:
    """URLs can carry a database password; messages never do."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


class Database:
    """A database of the provider's own (the capability cache, the callback store): its engine made
    on first use, its tables created then; no connection is made before that.

    A subclass names its ``metadata``, the ``setting`` and ``error`` that a bad URL is reported
    with, its pool, and the PostgreSQL advisory lock taken while creating tables (two processes
    creating them at once would otherwise collide); :meth:`_prepare` adds to that transaction.
    """

    metadata: ClassVar[MetaData]
    setting: ClassVar[str]
    error: ClassVar[type[Exception]]
    lock_key: ClassVar[int]
    pool_size: ClassVar[int] = 5
    max_overflow: ClassVar[int] = 10

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.url)!r})"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._create()
        return self._engine

    def _create(self) -> Engine:
        try:
            parsed = make_url(self.url)
        except Exception as exc:
            raise self.error(f"invalid {self.setting} {redact_url(self.url)}: {exc}") from None
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
            engine = create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})
            _sqlite_setup(engine)
        elif backend == "postgresql":
            engine = create_engine(
                parsed, pool_pre_ping=True, pool_size=self.pool_size, max_overflow=self.max_overflow
            )
        else:
            raise self.error(
                f"{self.setting} {redact_url(self.url)}: only sqlite and postgresql are supported"
            )
        try:
            with engine.execution_options(kaleyra_write=True).begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": self.lock_key})
                self.metadata.create_all(conn, checkfirst=True)
                self._prepare(conn)
        except BaseException:
            engine.dispose()
            raise
        return engine

    def _prepare(self, conn: Connection) -> None:
        """More work in the transaction that creates the tables (a schema version check, say)."""

    def write(self) -> Any:
        """A transaction that takes SQLite's write lock up front (BEGIN IMMEDIATE), so writers queue."""
        return self.engine.execution_options(kaleyra_write=True).begin()

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _sqlite_setup(engine: Engine) -> None:
    """WAL lets readers run beside a writer; busy_timeout and BEGIN IMMEDIATE (for connections with
    the execution option ``kaleyra_write``) make writers queue instead of failing."""

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
