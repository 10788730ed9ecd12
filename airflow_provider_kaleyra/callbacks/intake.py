"""Group commit: the callbacks of concurrent requests are stored in one transaction.

One transaction per callback caps intake at the database's commit rate (a few hundred to a few
thousand per second); Kaleyra sends one callback per number, a million for a big check. Here the
first request starts a write at once, and every request arriving while it runs joins the next one.
A request is answered only after the transaction holding its callback has committed, so nothing
acknowledged is ever lost, and a failed transaction fails (503) every request in it.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any

from starlette.concurrency import run_in_threadpool

from airflow_provider_kaleyra.callbacks.parsing import ParsedCallback, RawCallback
from airflow_provider_kaleyra.callbacks.store import CallbackStore

MAX_BATCH = 1000  # callbacks per transaction: bounded so one commit never holds the lock for long


class GroupCommit:
    """Queue of callbacks waiting for a transaction; one writer drains it, batch after batch."""

    def __init__(self, store: CallbackStore, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: list[tuple[RawCallback, ParsedCallback, asyncio.Future[bool]]] = []
        self._writing = False
        self._task: asyncio.Task[None] | None = None  # held: the loop keeps only a weak reference
        self._conn: Any = None  # PostgreSQL: the writer's async connection

    async def add(self, raw: RawCallback, parsed: ParsedCallback) -> bool:
        """Store one callback; returns once committed: ``True`` if new, ``False`` if delivered before."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._pending.append((raw, parsed, future))
        if not self._writing:
            self._writing = True
            self._task = loop.create_task(self._drain())
        # (no shield needed: the writer takes the callback from the queue whether or not anyone still waits)
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                try:
                    new = await self._write([(r, p) for r, p, _ in batch])
                except Exception as exc:
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (*_, future), flag in zip(batch, new, strict=True):
                        if not future.done():
                            future.set_result(flag)
        finally:
            self._writing = False

    async def _write(self, items: list[tuple[RawCallback, ParsedCallback]]) -> list[bool]:
        """PostgreSQL on the event loop, on this writer's own connection; SQLite in a thread."""
        if self.store.dialect != "postgresql":
            return await run_in_threadpool(self.store.add_callbacks, items)
        if self._conn is None:
            self._conn = await self.store.connect_async()
        try:
            return await self.store.aadd_callbacks(self._conn, items)
        except BaseException:
            conn, self._conn = self._conn, None
            with suppress(Exception):
                await conn.close()
            raise
