"""Group commit: concurrent callbacks share a transaction; each is answered only after it committed."""

from __future__ import annotations

import asyncio
import threading

import pytest

from airflow_provider_kaleyra.callbacks.bodies import RawCallback, parse_callback
from airflow_provider_kaleyra.callbacks.store import GroupCommit


class _Store:
    """Records each transaction; ``release`` holds the first one until the test lets it commit."""

    dialect = "sqlite"  # written from a thread, as SQLite is

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.fail = fail

    def add_callbacks(self, batch):
        self.release.wait(5)
        if self.fail:
            raise RuntimeError("database gone")
        self.batches.append([raw.body.decode() for raw, _ in batch])
        return [True] * len(batch)


def _item(i: int):
    raw = RawCallback(method="POST", body=b'{"number": "+9198765%05d", "capable": true}' % i)
    return raw, parse_callback(raw)


def test_callbacks_arriving_during_a_commit_share_the_next_one_and_wait_for_it():
    store = _Store()
    intake = GroupCommit(store)

    async def scenario():
        first = asyncio.ensure_future(intake.add(*_item(0)))
        await asyncio.sleep(0.05)  # the first transaction is running, held by the store
        rest = [asyncio.ensure_future(intake.add(*_item(i))) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in [first, *rest])  # nothing answered before its commit
        store.release.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(scenario()) == [True] * 6
    assert [len(batch) for batch in store.batches] == [1, 5]


def test_a_waiter_that_goes_away_does_not_take_its_callback_with_it():
    store = _Store()
    intake = GroupCommit(store)

    async def scenario():
        blocker = asyncio.ensure_future(intake.add(*_item(0)))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(intake.add(*_item(1)))
        await asyncio.sleep(0.01)
        gone.cancel()  # e.g. the client hung up
        store.release.set()
        await blocker
        await asyncio.sleep(0.05)
        return gone.cancelled()

    assert asyncio.run(scenario())
    assert sum(len(batch) for batch in store.batches) == 2


def test_a_failed_transaction_fails_every_callback_in_it():
    store = _Store(fail=True)
    store.release.set()
    intake = GroupCommit(store)

    async def scenario():
        return await asyncio.gather(*(intake.add(*_item(i)) for i in range(3)), return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    with pytest.raises(RuntimeError):
        asyncio.run(intake.add(*_item(9)))


@pytest.fixture
def pg_store(tmp_path):
    from airflow_provider_kaleyra.callbacks.store import CallbackStore
    from tests.databases import throwaway_database

    urls = throwaway_database("postgres", tmp_path)
    store = CallbackStore(next(urls))
    yield store
    store.dispose()
    next(urls, None)


def test_postgres_batches_are_written_from_the_event_loop_and_a_broken_connection_is_replaced(pg_store):
    from tests.store_queries import counts

    intake = GroupCommit(pg_store)

    async def scenario():
        assert await asyncio.gather(*(intake.add(*_item(i)) for i in range(5))) == [True] * 5
        await intake._conn.close()  # as a connection dropped by the server or the network
        with pytest.raises(Exception, match="(?i)closed"):
            await intake.add(*_item(5))
        assert intake._conn is None
        return await asyncio.gather(*(intake.add(*_item(i)) for i in range(5, 8)))

    assert asyncio.run(scenario()) == [True] * 3
    assert counts(pg_store) == {"callbacks": 8, "results": 8, "parse_errors": 0}
