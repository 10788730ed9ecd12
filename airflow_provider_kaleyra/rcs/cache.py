"""Capability cache: RCS answers remembered across runs, so a daily preflight asks only for new numbers.

One table keyed by (SID, number) in ``cache_url``'s database (no default: a per-host SQLite file would
give each worker its own cache); only ``rcs_enabled`` and ``rcs_disabled`` answers, each with its max age.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from itertools import islice
from typing import Any, Literal

from sqlalchemy import BigInteger, Column, MetaData, String, Table, delete

from airflow_provider_kaleyra.client.api import RCS_DISABLED, RCS_ENABLED
from airflow_provider_kaleyra.rcs.answers import Answer, shared
from airflow_provider_kaleyra.rcs.batching import plan_batch_sizes
from airflow_provider_kaleyra.utils.database import Database

log = logging.getLogger(__name__)

CHUNK = 1000  # numbers per read or write statement
WRITE_ROWS = 20 * CHUNK  # answers per write transaction: a big B-tree costs half the CPU per row
_WRITES_IN_FLIGHT = 2  # write transactions queued at most: memory stays bounded
_READS_AHEAD = 3  # chunks read ahead of the one handed out
Hit = tuple[Answer, int]  # a fresh answer from the cache and its age in seconds
REFRESH = "refresh"
CacheMode = bool | Literal["refresh"] | None
_JSON = "\x1e"  # marks a carrier field stored as JSON: it was not text (a number, say)

_COLUMNS = "sid, number, status, carrier_id, carrier_status, obtained_at"
_SELECT = "SELECT number, status, carrier_id, carrier_status, obtained_at FROM kaleyra_rcs_cache WHERE sid = "
_ON_CONFLICT = (
    " ON CONFLICT (sid, number) DO UPDATE SET status = excluded.status, carrier_id = excluded.carrier_id,"
    " carrier_status = excluded.carrier_status, obtained_at = excluded.obtained_at"
    " WHERE kaleyra_rcs_cache.obtained_at <= excluded.obtained_at"
)
_SQLITE_UPSERT = f"INSERT INTO kaleyra_rcs_cache ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)" + _ON_CONFLICT
_PG_UPSERT = (
    f"INSERT INTO kaleyra_rcs_cache ({_COLUMNS}) SELECT * FROM unnest(%s::varchar[], %s::bigint[], "
    "%s::varchar[], %s::varchar[], %s::varchar[], %s::bigint[])" + _ON_CONFLICT
)

cache_table = Table(
    "kaleyra_rcs_cache",
    MetaData(),
    Column("sid", String(64), primary_key=True),
    Column("number", BigInteger, primary_key=True, autoincrement=False),  # E.164 digits, no "+"
    Column("status", String(32), nullable=False),
    Column("carrier_id", String(255)),
    Column("carrier_status", String(255)),
    Column("obtained_at", BigInteger, nullable=False, index=True),  # Unix time, seconds
    sqlite_with_rowid=False,  # one B-tree keyed (sid, number): a read is one lookup, not two
)


class CapabilityCacheError(Exception):
    """The capability cache cannot be used as configured."""


def _text(value: Any) -> str | None:
    """A carrier field as stored: text as is, anything else as marked JSON, so it reads back equal."""
    if value is None or (isinstance(value, str) and not value.startswith(_JSON)):
        return value
    return _JSON + json.dumps(value)


def _value(stored: str | None) -> Any:
    return json.loads(stored[1:]) if stored and stored[0] == _JSON else stored


class CapabilityCache(Database):
    """The table and its statements; one engine per URL per process (:func:`get_cache`)."""

    metadata = cache_table.metadata
    setting = "cache_url"
    error = CapabilityCacheError
    lock_key = 0x4B414C4559524143  # pg_advisory_xact_lock key for creating the table ("KALEYRAC")
    pool_size = max_overflow = 2

    def fresh(
        self,
        sid: str,
        numbers: list[str],
        max_age_positive: timedelta,
        max_age_negative: timedelta,
        now: int | None = None,
    ) -> dict[str, Hit]:
        """``{e164: (answer, age in seconds)}`` for the numbers with an answer young enough; one query."""
        now = int(time.time()) if now is None else now
        oldest = {
            RCS_ENABLED: now - max_age_positive.total_seconds(),
            RCS_DISABLED: now - max_age_negative.total_seconds(),
        }
        keys = [int(n[1:]) for n in numbers]
        found: dict[str, Hit] = {}
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                rows = conn.exec_driver_sql(_SELECT + "%s AND number = ANY(%s::bigint[])", (sid, keys))
            else:
                marks = ", ".join("?" * len(keys))
                rows = conn.exec_driver_sql(_SELECT + f"? AND number IN ({marks})", (sid, *keys))
            seen: dict[tuple[str, str | None, str | None], Answer] = {}  # one record per distinct answer
            for number, status, carrier_id, carrier_status, obtained_at in rows:
                if status in oldest and obtained_at >= oldest[status]:
                    fields = (status, carrier_id, carrier_status)
                    answer = seen.get(fields) or seen.setdefault(
                        fields, shared(Answer(status, _value(carrier_id), _value(carrier_status)))
                    )
                    found[f"+{number}"] = (answer, max(0, now - obtained_at))
        return found

    def remember(self, sid: str, answers: Iterable[tuple[str, Answer]], now: int | None = None) -> int:
        """Upsert the positive and negative answers; returns rows written. Only a younger row replaces
        one, so racing writers never roll an answer back. (Driver SQL: SQLAlchemy's per-row handling
        cost 10x the database's work.)"""
        now = int(time.time()) if now is None else now
        rows = (
            (sid, int(e164[1:]), a.status, _text(a.carrier_id), _text(a.carrier_status), now)
            for e164, a in answers
            if a.status in (RCS_ENABLED, RCS_DISABLED)
        )
        written = 0
        with self.write() as conn:
            while batch := list(islice(rows, CHUNK)):
                if conn.dialect.name == "postgresql":
                    batch = list({row[1]: row for row in batch}.values())  # one row per key per statement
                    conn.exec_driver_sql(_PG_UPSERT, tuple(map(list, zip(*batch))))
                else:
                    conn.exec_driver_sql(_SQLITE_UPSERT, batch)  # executemany
                written += len(batch)
        return written

    def purge(self, older_than: timedelta, now: int | None = None) -> int:
        """Delete answers obtained before ``now - older_than``; returns rows deleted."""
        if older_than.total_seconds() < 0:
            raise ValueError("older_than must not be negative")
        cutoff = (int(time.time()) if now is None else now) - older_than.total_seconds()
        with self.write() as conn:
            deleted = conn.execute(delete(cache_table).where(cache_table.c.obtained_at < cutoff)).rowcount
        log.info("Purged %s cached Kaleyra answers older than %s", deleted, older_than)
        return int(deleted or 0)


@functools.cache
def get_cache(url: str) -> CapabilityCache:
    """One cache (one engine, one pool) per URL per process."""
    return CapabilityCache(url)


class CacheRun:
    """One run's use of the cache: :meth:`lookup` reads fresh answers ahead on one thread, :meth:`add`
    writes new ones behind on another (a read never queues behind a big write; the drivers release the
    GIL), so the thread feeding API calls never waits for the cache; the counts feed the summary."""

    def __init__(
        self, cache: CapabilityCache, sid: str, ages: tuple[timedelta, timedelta], refresh: bool = False
    ) -> None:
        self.cache, self.sid, self.ages, self.refresh = cache, sid, ages, refresh  # ages: positive, negative
        self.served = self.asked = self.written = 0  # numbers from the cache, left for the API; rows written
        self._pending: list[tuple[str, Answer]] = []
        self._writes: deque[Future[int]] = deque()
        self._reader = ThreadPoolExecutor(1, "kaleyra-cache-read")  # (no thread starts before a submit)
        self._writer = ThreadPoolExecutor(1, "kaleyra-cache-write")

    def lookup(self, numbers: Iterable[str]) -> Iterator[tuple[list[str], dict[str, Hit]]]:
        """``(chunk, {number: hit})`` for every ``CHUNK`` numbers, in order: the numbers of the chunk
        missing from the dict must be asked (all of them with ``refresh``)."""
        reads: deque[tuple[list[str], Future[dict[str, Hit]] | None]] = deque()
        read = functools.partial(self._reader.submit, self.cache.fresh, self.sid)
        numbers = iter(numbers)
        while (chunk := list(islice(numbers, CHUNK))) or reads:
            if chunk:
                reads.append((chunk, None if self.refresh else read(chunk, *self.ages)))
            if len(reads) > _READS_AHEAD or not chunk:
                chunk, reading = reads.popleft()
                found = reading.result() if reading else {}
                self.served += len(found)
                self.asked += len(chunk) - len(found)
                yield chunk, found

    def add(self, answers: Iterable[tuple[str, Answer]]) -> None:
        """Queue new ``(number, answer)`` pairs for writing; only positive and negative ones are kept."""
        self._pending.extend(answers)
        if len(self._pending) >= WRITE_ROWS:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        if self._pending:
            self._writes.append(self._writer.submit(self.cache.remember, self.sid, self._pending))
            self._pending = []
        while self._writes and (wait or self._writes[0].done() or len(self._writes) > _WRITES_IN_FLIGHT):
            self.written += self._writes.popleft().result()

    def close(self) -> None:
        """Write what is queued and wait for it; a database error surfaces here at the latest."""
        try:
            self.flush(wait=True)
        finally:
            self._reader.shutdown(cancel_futures=True)
            self._writer.shutdown(cancel_futures=True)

    def summary(self) -> dict[str, int | bool]:
        """Counts for the XCom summary; calls saved: those planned for all the numbers less those asked."""
        planned = len(plan_batch_sizes(self.served + self.asked))
        return {
            "from_cache": self.served,
            "asked": self.asked,
            "written_to_cache": self.written,
            "requests_saved": max(0, planned - len(plan_batch_sizes(self.asked))),
            "refresh": self.refresh,
        }


def resolve(
    mode: CacheMode, *, url: str | None, sid: str, max_age_positive: timedelta, max_age_negative: timedelta
) -> CacheRun | None:
    """The run's cache for ``cache=mode``: ``None`` (on when ``cache_url`` is set), ``True``,
    ``False`` or ``"refresh"``; ``None`` back when the cache is off."""
    if mode is None:
        mode = bool(url)
    if mode is False:
        return None
    if mode is not True and mode != REFRESH:
        raise ValueError(f'cache must be True, False, "refresh" or None, got {mode!r}')
    if not url:
        raise CapabilityCacheError(
            f"cache={mode!r} needs the Kaleyra connection extra 'cache_url': the SQLAlchemy URL of a "
            "database every worker reaches (postgresql+psycopg://... across hosts); there is no "
            "default, since a per-host SQLite file would give each worker its own cache"
        )
    for name, age in (("positive", max_age_positive), ("negative", max_age_negative)):
        if age.total_seconds() < 0:
            raise ValueError(f"cache max age for {name} answers must not be negative, got {age}")
    return CacheRun(get_cache(url), sid, (max_age_positive, max_age_negative), refresh=mode == REFRESH)
