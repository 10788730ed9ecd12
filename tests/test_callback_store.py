"""The callback store, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect

from airflow_provider_kaleyra.callbacks.bodies import RawCallback
from airflow_provider_kaleyra.callbacks.store import (
    SCHEMA_VERSION,
    CallbackStore,
    SchemaVersionError,
    get_store,
)
from airflow_provider_kaleyra.callbacks.store_sql import schema_version_table
from airflow_provider_kaleyra.utils.database import redact_url
from tests.databases import throwaway_database
from tests.store_queries import count_answered, counts, raw_callbacks, results_for, schema_version

NOW = datetime.now(UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """A fresh, empty store per test: a SQLite file, or a throwaway PostgreSQL schema."""
    yield from throwaway_database(request.param, tmp_path)


@pytest.fixture
def store(store_url):
    s = CallbackStore(store_url)
    yield s
    s.dispose()


def _cb(payload, *, at=None, method="POST", query="") -> RawCallback:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return RawCallback(method, body, "application/json", query=query, received_at=at or NOW)


def test_tables_and_schema_version_created_on_first_use(store):
    assert schema_version(store) == SCHEMA_VERSION
    tables = set(inspect(store.engine).get_table_names())
    assert {"kaleyra_schema_version", "kaleyra_callbacks", "kaleyra_callback_results"} <= tables
    indexes = {i["name"] for i in inspect(store.engine).get_indexes("kaleyra_callback_results")}
    assert "ix_kaleyra_result_number_received" in indexes


def test_refuses_a_newer_schema(store, store_url):
    with store.engine.begin() as conn:
        conn.execute(schema_version_table.insert().values(version=SCHEMA_VERSION + 1))
    with pytest.raises(SchemaVersionError, match="newer"):
        schema_version(CallbackStore(store_url))


def test_same_delivery_is_stored_once(store):
    assert store.add_callback(_cb({"number": "919876543210", "soip_capable": True})) is True
    assert store.add_callback(_cb({"number": "919876543210", "soip_capable": True})) is False
    # Same JSON, other key order and spacing: still the same delivery.
    respaced = b'{ "soip_capable" : true,  "number":"919876543210" }'
    assert store.add_callback(_cb(respaced)) is False
    assert store.add_callback(_cb({"number": "919876543210", "soip_capable": True}, method="PUT")) is True
    assert counts(store)["callbacks"] == 2


def test_number_and_request_id_are_unique_the_latest_answer_wins(store):
    store.add_callback(_cb({"number": "919876543210", "capable": "yes", "request_id": "r1", "attempt": 1}))
    store.add_callback(
        _cb(
            {"number": "919876543210", "capable": "no", "request_id": "r1", "attempt": 2},
            at=NOW + timedelta(1),
        )
    )
    assert counts(store) == {"callbacks": 2, "results": 1, "parse_errors": 0}
    [result] = results_for(store, ["+919876543210"], NOW).values()
    assert (result.capable, result.received_at) == (False, NOW + timedelta(1))


def test_within_one_batch_the_last_new_answer_for_a_request_wins_and_ids_without_request_all_count(store):
    from airflow_provider_kaleyra.callbacks.bodies import parse_callback

    stored = _cb({"number": "919876543210", "capable": "yes", "request_id": "r1", "attempt": 0})
    assert store.add_callback(stored) is True
    raws = [
        _cb({"number": "919876543210", "capable": "no", "request_id": "r1", "attempt": 1}),
        _cb({"number": "919876543210", "capable": "yes", "request_id": "r1", "attempt": 2}),
        _cb({"number": "919876543210", "capable": "no", "request_id": "r1", "attempt": 3}),
        _cb({"number": "919876543210", "capable": "yes", "request_id": "r1", "attempt": 0}),  # re-delivery
        _cb({"number": "919876543211", "capable": "yes", "attempt": 1}),  # no request id: each is kept
        _cb({"number": "919876543211", "capable": "no", "attempt": 2}),
    ]
    flags = store.add_callbacks([(raw, parse_callback(raw)) for raw in raws])
    assert flags == [True, True, True, False, True, True]
    assert counts(store) == {"callbacks": 6, "results": 3, "parse_errors": 0}
    found = results_for(store, ["+919876543210"], NOW - timedelta(1))
    assert found["+919876543210"].capable is False  # attempt 3, the last new one


def test_a_delivery_repeated_after_a_new_submission_counts_for_it(store):
    """Kaleyra re-delivers identically: the stored copy's time moves, so the new submission sees it."""
    payload = {"number": "919876543210", "capable": True}
    assert store.add_callback(_cb(payload, at=NOW - timedelta(hours=1))) is True
    assert count_answered(store, ["+919876543210"], NOW) == 0  # submitted after the first delivery
    assert store.add_callback(_cb(payload, at=NOW + timedelta(seconds=1))) is False
    assert count_answered(store, ["+919876543210"], NOW) == 1
    assert counts(store) == {"callbacks": 1, "results": 1, "parse_errors": 0}


def test_a_batch_is_one_transaction_with_an_answer_per_delivery(store):
    from airflow_provider_kaleyra.callbacks.bodies import parse_callback

    raws = [_cb({"number": f"91987654{i:04d}", "capable": True}) for i in range(50)]
    raws.append(_cb({"number": "919876540000", "capable": True}))  # the first one, again
    raws.append(_cb(b"{broken"))
    flags = store.add_callbacks([(raw, parse_callback(raw)) for raw in raws])
    assert flags == [True] * 50 + [False, True]
    assert counts(store) == {"callbacks": 51, "results": 50, "parse_errors": 1}


def test_a_failed_batch_stores_nothing_and_the_next_batch_reconnects(store):
    """The group commit keeps one connection; when it breaks, that batch fails whole, the next one works."""
    from airflow_provider_kaleyra.callbacks.bodies import parse_callback

    def batch(first: int) -> list:
        raws = [_cb({"number": f"91987654{i:04d}", "capable": True}) for i in range(first, first + 5)]
        return [(raw, parse_callback(raw)) for raw in raws]

    assert store.add_callbacks(batch(0)) == [True] * 5
    store._writer.driver_connection.close()  # as a connection dropped by the server or the network
    with pytest.raises(Exception, match="(?i)closed"):
        store.add_callbacks(batch(5))
    assert counts(store)["callbacks"] == 5
    assert store.add_callbacks(batch(5)) == [True] * 5
    assert counts(store) == {"callbacks": 10, "results": 10, "parse_errors": 0}


def test_results_for_counts_only_callbacks_since(store):
    since = NOW - timedelta(minutes=5)
    store.add_callback(_cb({"number": "+919876543210", "capable": False}, at=since - timedelta(hours=1)))
    store.add_callback(_cb({"number": "+919876543211", "capable": True}, at=since + timedelta(seconds=1)))
    store.add_callback(
        _cb({"mobile": "919876543212", "status": "not_capable"}, at=since + timedelta(seconds=2))
    )
    numbers = ["+919876543210", "+919876543211", "+919876543212", "+919876543213"]
    found = results_for(store, numbers, since)
    assert set(found) == {"+919876543211", "+919876543212"}
    assert found["+919876543211"].outcome == "capable"
    assert found["+919876543212"].outcome == "not_capable"
    assert found["+919876543211"].received_at == since + timedelta(seconds=1)
    assert count_answered(store, numbers, since) == 2
    assert count_answered(store, numbers, since - timedelta(days=1)) == 3


def test_latest_readable_answer_wins(store):
    n = "+919876543210"
    store.add_callback(_cb({"number": n, "capable": False}, at=NOW - timedelta(seconds=30)))
    store.add_callback(_cb({"number": n, "capable": True}, at=NOW - timedelta(seconds=20)))
    store.add_callback(_cb({"number": n, "capable": "mystery"}, at=NOW - timedelta(seconds=10)))
    result = results_for(store, [n], NOW - timedelta(minutes=1))[n]
    assert result.capable is True


def test_unreadable_answer_counts_as_answered_but_unparseable(store):
    n = "+919876543210"
    store.add_callback(_cb({"number": n, "code": "XYZ123"}))
    result = results_for(store, [n], NOW - timedelta(minutes=1))[n]
    assert (result.outcome, result.status) == ("unparseable", "XYZ123")


def test_malformed_callback_is_kept_and_flagged(store):
    assert store.add_callback(_cb(b"{not json")) is True
    assert counts(store) == {"callbacks": 1, "results": 0, "parse_errors": 1}
    [row] = raw_callbacks(store)
    assert row["body"] == b"{not json" and "JSON" in row["parse_error"]


def test_a_submission_of_many_numbers_is_counted_and_streamed(store):
    numbers = [f"+9198765{i:05d}" for i in range(12_050)]
    answered = numbers[::3]
    store.add_callback(_cb([{"number": n, "capable": True} for n in answered]))
    since = NOW - timedelta(minutes=1)
    assert store.add_submission("s1", numbers) == len(numbers)
    assert store.submission_size("s1") == len(numbers)
    assert store.count_answered("s1", since) == len(answered)
    assert store.count_answered("s1", NOW + timedelta(seconds=1)) == 0
    streamed = list(store.results("s1", since))
    assert sorted(n for n, _ in streamed) == sorted(numbers)
    assert {n for n, r in streamed if r} == set(answered)


def test_purge_deletes_only_old_callbacks(store):
    store.add_callback(_cb({"number": "+919876543210", "capable": True}, at=NOW - timedelta(days=40)))
    store.add_callback(_cb(b"{broken", at=NOW - timedelta(days=40)))
    store.add_callback(_cb({"number": "+919876543211", "capable": True}, at=NOW - timedelta(days=1)))
    assert store.purge(timedelta(days=30)) == 2
    assert counts(store) == {"callbacks": 1, "results": 1, "parse_errors": 0}
    assert results_for(store, ["+919876543211"], NOW - timedelta(days=2))
    with pytest.raises(ValueError):
        store.purge(timedelta(days=-1))


def test_concurrent_writers_do_not_fail(store):
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for i in range(15):
                store.add_callback(_cb({"number": f"+91987654{worker:02d}{i:02d}", "capable": True}))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert counts(store)["results"] == 90


def test_get_store_caches_per_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert get_store(url) is get_store(url)
    assert get_store(url) is not get_store(f"sqlite:///{tmp_path / 'y.db'}")


def test_redact_url_hides_password():
    assert "s3cret" not in redact_url("postgresql+psycopg://u:s3cret@db/x")
