"""The provider's own databases (callback store, capability cache), reached by every component:
PostgreSQL across hosts, or a SQLite file on one machine when named (both need ``ON CONFLICT``)."""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url

# WAL lets readers run beside a writer; busy_timeout (with BEGIN IMMEDIATE) makes writers queue.
_SQLITE_PRAGMAS = ("busy_timeout = 30000", "journal_mode = WAL", "synchronous = NORMAL", "foreign_keys = ON")


def redact_url(url: str) -> str:
    """URLs can carry a database password; messages never do."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


class Database:
    """Engine and tables made on first use. A subclass names its ``metadata``, the ``setting`` and ``error``
    a bad URL is reported with, its pool, and the PostgreSQL advisory lock held while creating tables
    (two processes creating them at once would collide); :meth:`_prepare` adds to that transaction."""

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
        where = f"{self.setting} {redact_url(self.url)}"
        try:
            parsed = make_url(self.url)
        except Exception as exc:
            raise self.error(f"invalid {where}: {exc}") from None
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
            engine = create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)
        elif backend == "postgresql":
            pool = {"pool_size": self.pool_size, "max_overflow": self.max_overflow}
            engine = create_engine(parsed, pool_pre_ping=True, **pool)
        else:
            raise self.error(f"{where}: only sqlite and postgresql are supported")
        try:
            with engine.execution_options(kaleyra_write=True).begin() as conn:
                if backend == "postgresql":
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


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # BEGIN is ours (see _sqlite_begin)
    for pragma in _SQLITE_PRAGMAS:
        dbapi_conn.execute(f"PRAGMA {pragma}")


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("kaleyra_write") else "BEGIN")
