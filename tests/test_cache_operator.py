"""The capability cache in the bulk operator: over the simulator (real HTTP), SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator
from airflow_provider_kaleyra.rcs.cache import CapabilityCache
from airflow_provider_kaleyra.rcs.outputs import read_results
from airflow_provider_kaleyra.utils.storage import as_path
from tests.databases import throwaway_database
from tests.test_cache import _age, _asked, _connect, _count, _expected, _numbers


@pytest.fixture(params=["sqlite", "postgres"])
def cache_url(request, tmp_path):
    yield from throwaway_database(request.param, tmp_path)


ANSWER = ("row", "input", "e164", "status", "carrier_id", "carrier_status", "error")


def _audience(tmp_path, numbers: list[str]) -> str:
    path = tmp_path / "audience.txt"
    path.write_text("".join(f"{n}\n" for n in numbers))
    return str(path)


def _run(tmp_path, name: str, **kwargs) -> tuple[dict, list[dict]]:
    op = KaleyraRcsBulkLookupOperator(task_id=name, output=str(tmp_path / f"{name}.csv"), **kwargs)
    summary = op.execute({})
    return summary, list(read_results(as_path(summary["output"])))


def _answers(rows: list[dict]) -> list[tuple]:
    return [tuple(r[f] for f in ANSWER) for r in rows]


def test_day_two_asks_only_new_numbers_and_cached_rows_equal_the_api(
    monkeypatch, simulator, cache_url, tmp_path
):
    _connect(monkeypatch, simulator, cache_url)
    day1_numbers = [*_numbers(1000), "not a number", "(415) 555-0007"]
    summary1, rows1 = _run(tmp_path, "day1", audience=_audience(tmp_path, day1_numbers))
    assert _asked(simulator) == 1000 and summary1["requests"] == 2
    assert summary1["cache"]["written_to_cache"] == 1000 and summary1["cache"]["from_cache"] == 0
    assert {r["source"] for r in rows1 if r["e164"]} == {"api"}
    assert all(
        (r["status"], r["carrier_id"], r["carrier_status"]) == _expected(r["e164"]) for r in rows1[:1000]
    )

    simulator.reset_stats()
    summary2, rows2 = _run(tmp_path, "day2", audience=_audience(tmp_path, day1_numbers))
    assert _asked(simulator) == 0 and summary2["requests"] == 0
    assert summary2["cache"]["from_cache"] == 1000 and summary2["cache"]["requests_saved"] == 2
    assert _answers(rows2) == _answers(rows1)  # every row, as the API answered it
    assert {r["source"] for r in rows2 if r["e164"]} == {"cache"}
    assert rows2[1000]["source"] is None and rows2[1000]["status"] == "invalid"

    simulator.reset_stats()
    day3 = [*_numbers(1000), *_numbers(150, start=5000)]  # 150 new numbers: one bulk call
    summary3, rows3 = _run(tmp_path, "day3", audience=_audience(tmp_path, day3))
    assert _asked(simulator) == 150 and summary3["requests"] == 1
    assert [r["source"] for r in rows3] == ["cache"] * 1000 + ["api"] * 150


def test_two_shards_of_one_run_on_one_cache_do_not_ask_twice(monkeypatch, simulator, cache_url, tmp_path):
    _connect(monkeypatch, simulator, cache_url)
    numbers = _numbers(2000)
    audience = _audience(tmp_path, numbers + numbers[::-1])  # every number twice
    summaries: dict[int, dict] = {}
    errors: list[BaseException] = []

    def shard(index: int, day: str) -> None:
        try:
            op = KaleyraRcsBulkLookupOperator(
                task_id=f"{day}-{index}",
                audience=audience,
                output=str(tmp_path / f"{day}-{index}.csv"),
                shard_index=index,
                shard_count=2,
            )
            summaries[index] = op.execute({})
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    for day in ("day1", "day2"):
        simulator.reset_stats()
        threads = [threading.Thread(target=shard, args=(i, day)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        asked = _asked(simulator)
        assert asked == (2000 if day == "day1" else 0)  # each number asked once, by one shard
        assert sum(s["rows"] for s in summaries.values()) == 4000
    assert _count(CapabilityCache(cache_url)) == 2000


def test_expired_answers_are_asked_again_and_refresh_asks_all(monkeypatch, simulator, cache_url, tmp_path):
    _connect(monkeypatch, simulator, cache_url)
    numbers = _numbers(600)
    negatives = sum(1 for n in numbers if _expected(n)[0] == "rcs_disabled")
    audience = _audience(tmp_path, numbers)
    _run(tmp_path, "day1", audience=audience)
    cache = CapabilityCache(cache_url)
    _age(cache, 3 * 3600)
    simulator.reset_stats()
    summary, rows = _run(
        tmp_path, "day2", audience=audience, cache_max_age_positive="1d", cache_max_age_negative="2h"
    )
    assert _asked(simulator) == negatives == summary["cache"]["asked"]
    assert all((r["source"] == "cache") == (r["status"] == "rcs_enabled") for r in rows)
    assert all(r["age_seconds"] >= 3 * 3600 for r in rows if r["source"] == "cache")
    simulator.reset_stats()
    _run(tmp_path, "refresh", audience=audience, cache="refresh")
    assert _asked(simulator) == 600
    cache.dispose()


def test_cache_true_without_a_cache_url_fails_without_retry(monkeypatch, simulator, tmp_path):
    _connect(monkeypatch, simulator, "")
    with pytest.raises(AirflowFailException, match="cache_url"):
        _run(tmp_path, "x", numbers=_numbers(3), cache=True)
    summary, rows = _run(tmp_path, "y", numbers=_numbers(3))  # default: off without cache_url
    assert summary["cache"] is None and {r["source"] for r in rows} == {"api"}
    with pytest.raises(ValueError, match="cache"):
        KaleyraRcsBulkLookupOperator(task_id="z", output="o.csv", numbers=["1"], cache="yes")
