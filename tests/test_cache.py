"""The capability cache: its table on SQLite and PostgreSQL, and ``lookup_rcs_many`` over real HTTP."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from airflow_provider_kaleyra.client.api import FAILED, RCS_DISABLED, RCS_ENABLED
from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from airflow_provider_kaleyra.rcs.answers import Answer
from airflow_provider_kaleyra.rcs.cache import CapabilityCache, CapabilityCacheError, cache_table, resolve
from kaleyra_simulator import rcs_answer
from tests.databases import throwaway_database

SID = "AC-TEST-SID"
HOUR = timedelta(hours=1)
NOW = 1_800_000_000


@pytest.fixture(params=["sqlite", "postgres"])
def cache_url(request, tmp_path):
    yield from throwaway_database(request.param, tmp_path)


@pytest.fixture
def cache(cache_url):
    c = CapabilityCache(cache_url)
    yield c
    c.dispose()


def _numbers(count: int, start: int = 0) -> list[str]:
    return [f"+1415555{n:04d}" for n in range(start, start + count)]


def _age(cache: CapabilityCache, seconds: int) -> None:
    """Make every cached answer ``seconds`` older."""
    with cache.engine.begin() as conn:
        conn.execute(update(cache_table).values(obtained_at=cache_table.c.obtained_at - seconds))


def _count(cache: CapabilityCache) -> int:
    """Answers in the cache (the provider itself never needs to count them)."""
    with cache.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(cache_table)).scalar() or 0)


# -- the table ---------------------------------------------------------------------------------


def test_positive_and_negative_answers_expire_by_their_own_ages(cache):
    yes, no = Answer(RCS_ENABLED, "Google", "ACTIVE"), Answer(RCS_DISABLED, "Jio", "INACTIVE")
    assert cache.remember(SID, [("+14155550001", yes), ("+14155550002", no)], now=NOW) == 2

    def fresh(at):
        return cache.fresh(SID, ["+14155550001", "+14155550002"], 10 * HOUR, 2 * HOUR, now=at)

    assert fresh(NOW + 60) == {"+14155550001": (yes, 60), "+14155550002": (no, 60)}
    assert fresh(NOW + 3 * 3600) == {"+14155550001": (yes, 3 * 3600)}  # the negative went stale first
    assert fresh(NOW + 11 * 3600) == {}


def test_carrier_fields_read_back_equal_whatever_their_type(cache):
    odd = [
        ("+14155550001", Answer(RCS_ENABLED, 310260, 1.5)),
        ("+14155550002", Answer(RCS_DISABLED, "\x1eodd", None)),
        ("+14155550003", Answer(RCS_ENABLED, "Jio", "ACTIVE")),
    ]
    cache.remember(SID, odd, now=NOW)
    got = cache.fresh(SID, [n for n, _ in odd], HOUR, HOUR, now=NOW)
    assert {n: answer for n, (answer, _) in got.items()} == dict(odd)


def test_failed_and_unknown_statuses_are_never_written(cache):
    answers = [("+14155550001", Answer(FAILED, error="HTTP 503")), ("+14155550002", Answer("unknown"))]
    assert cache.remember(SID, answers, now=NOW) == 0
    assert _count(cache) == 0


def test_keyed_by_account_and_a_younger_answer_wins(cache):
    cache.remember(SID, [("+14155550001", Answer(RCS_ENABLED))], now=NOW)
    cache.remember("OTHER-SID", [("+14155550001", Answer(RCS_DISABLED))], now=NOW)
    cache.remember(SID, [("+14155550001", Answer(RCS_DISABLED))], now=NOW - 100)  # late, older: ignored
    got = cache.fresh(SID, ["+14155550001"], HOUR, HOUR, now=NOW)
    assert got == {"+14155550001": (Answer(RCS_ENABLED), 0)}
    cache.remember(SID, [("+14155550001", Answer(RCS_DISABLED, "X"))], now=NOW + 5)
    got = cache.fresh(SID, ["+14155550001"], HOUR, HOUR, now=NOW + 5)
    assert got == {"+14155550001": (Answer(RCS_DISABLED, "X"), 0)}
    assert _count(cache) == 2


def test_batched_writes_and_reads_beyond_one_chunk(cache):
    numbers = _numbers(2500)
    assert cache.remember(SID, ((n, Answer(RCS_ENABLED)) for n in numbers), now=NOW) == 2500
    assert len(cache.fresh(SID, numbers[:1000], HOUR, HOUR, now=NOW)) == 1000
    assert _count(cache) == 2500


def test_purge_by_age(cache):
    cache.remember(SID, [("+14155550001", Answer(RCS_ENABLED))], now=NOW - 40 * 86400)
    cache.remember(SID, [("+14155550002", Answer(RCS_ENABLED))], now=NOW - 10 * 86400)
    assert cache.purge(timedelta(days=30), now=NOW) == 1
    assert _count(cache) == 1
    with pytest.raises(ValueError, match="negative"):
        cache.purge(timedelta(days=-1))


def test_purge_cli(cache_url, capsys):
    from airflow_provider_kaleyra.rcs.cache_cli import main

    c = CapabilityCache(cache_url)
    c.remember(SID, [("+14155550001", Answer(RCS_ENABLED))], now=int(time.time()) - 31 * 86400)
    c.remember(SID, [("+14155550002", Answer(RCS_ENABLED))])
    assert main(["purge", "--url", cache_url, "--older-than", "30d"]) == 0
    assert _count(c) == 1
    assert "purged 1 cached answers" in capsys.readouterr().out
    c.dispose()


def test_purge_cache_in_a_task_raises_a_task_error_not_a_usage_error(cache_url, monkeypatch):
    from airflow_provider_kaleyra.rcs.cache_cli import purge_cache

    c = CapabilityCache(cache_url)
    c.remember(SID, [("+14155550001", Answer(RCS_ENABLED))], now=int(time.time()) - 31 * 86400)
    c.remember(SID, [("+14155550002", Answer(RCS_ENABLED))])
    conn = {"conn_type": "kaleyra", "login": SID, "password": "key", "extra": {"cache_url": cache_url}}
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_PURGE", json.dumps(conn))
    for bad in ("thirty days", "-1d", ""):
        with pytest.raises(ValueError, match="older_than: not an age") as raised:
            purge_cache(older_than=bad, kaleyra_conn_id="kaleyra_purge")
        assert type(raised.value) is ValueError  # not argparse's ArgumentTypeError, nor SystemExit
    assert _count(c) == 2
    assert purge_cache(older_than="30d", kaleyra_conn_id="kaleyra_purge") == 1
    assert purge_cache(older_than=timedelta(days=1), kaleyra_conn_id="kaleyra_purge") == 0
    assert _count(c) == 1
    conn["extra"] = {}
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_PURGE", json.dumps(conn))
    with pytest.raises(ValueError, match="has no cache_url"):
        purge_cache(kaleyra_conn_id="kaleyra_purge")
    c.dispose()


def test_resolve_needs_an_explicit_url_and_a_known_mode():
    ages = {"sid": SID, "max_age_positive": HOUR, "max_age_negative": HOUR}
    assert resolve(None, url=None, **ages) is None
    assert resolve(False, url="sqlite://", **ages) is None
    with pytest.raises(CapabilityCacheError, match="cache_url"):
        resolve(True, url=None, **ages)
    with pytest.raises(CapabilityCacheError, match="cache_url"):
        resolve("refresh", url="", **ages)
    with pytest.raises(ValueError, match="refresh"):
        resolve("yes", url="sqlite://", **ages)
    assert resolve(None, url="sqlite://", **ages).refresh is False
    assert resolve("refresh", url="sqlite://", **ages).refresh is True


# -- lookup_rcs_many over the simulator --------------------------------------------------------


def _connect(monkeypatch, sim, cache_url, **extra) -> KaleyraHook:
    conn = {
        "conn_type": "kaleyra",
        "login": sim.config.sid,
        "password": sim.config.api_key,
        "extra": {
            "rcs_base_url": sim.url,
            "default_region": "US",
            "rate_limit": 0,
            "max_concurrency": 4,
            "max_retries": 0,
            "retry_backoff": 0,
            "cache_url": cache_url,
            **extra,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_DEFAULT", json.dumps(conn))
    return KaleyraHook()


def _asked(sim) -> int:
    return sim.stats()["numbers_looked_up"]["rcs"]


def _expected(e164: str) -> tuple[str, str, str]:
    device = rcs_answer(e164)
    return (
        RCS_ENABLED if device["rcsEnabled"] else RCS_DISABLED,
        device["carrierId"],
        device["carrierStatus"],
    )


def _answers(results) -> list[tuple]:
    return [(r.input, r.e164, r.status, r.carrier_id, r.carrier_status, r.error) for r in results]


def test_second_run_takes_every_answer_from_the_cache_equal_to_the_api(monkeypatch, simulator, cache_url):
    inputs = [*_numbers(1200), "garbage", "(415) 555-0003"]  # a duplicate in national form
    hook = _connect(monkeypatch, simulator, cache_url)
    day1 = list(hook.lookup_rcs_many(inputs))
    assert _asked(simulator) == 1200
    assert {r.source for r in day1 if r.e164} == {"api"} and day1[1200].source is None
    assert all((r.status, r.carrier_id, r.carrier_status) == _expected(r.e164) for r in day1 if r.e164)
    assert hook.last_cache.written == 1200

    simulator.reset_stats()
    day2 = list(KaleyraHook().lookup_rcs_many(inputs))
    assert _asked(simulator) == 0
    assert _answers(day2) == _answers(day1)  # every row, cache or API
    assert {r.source for r in day2 if r.e164} == {"cache"}
    assert all(0 <= r.age_seconds < 60 for r in day2 if r.e164)


def test_only_unknown_numbers_are_planned(monkeypatch, simulator, cache_url):
    hook = _connect(monkeypatch, simulator, cache_url)
    list(hook.lookup_rcs_many(_numbers(1000)))
    simulator.reset_stats()
    results = list(KaleyraHook().lookup_rcs_many(_numbers(1150)))  # 150 new: one bulk call
    stats = simulator.stats()
    assert stats["numbers_looked_up"]["rcs"] == 150
    assert stats["requests"]["rcs_bulk"] == 1 and stats["requests"]["rcs_single"] == 0
    assert [r.source for r in results].count("cache") == 1000
    simulator.reset_stats()
    list(KaleyraHook().lookup_rcs_many(_numbers(1160)))  # 10 new: single lookups
    stats = simulator.stats()
    assert stats["requests"]["rcs_single"] == 10 and stats["requests"]["rcs_bulk"] == 0


def test_expired_answers_are_asked_again_by_their_own_ages(monkeypatch, simulator, cache_url):
    numbers = _numbers(600)
    negatives = sum(1 for n in numbers if _expected(n)[0] == RCS_DISABLED)
    assert 0 < negatives < len(numbers)
    hook = _connect(
        monkeypatch, simulator, cache_url, cache_max_age_positive="10h", cache_max_age_negative="2h"
    )
    list(hook.lookup_rcs_many(numbers))
    cache = CapabilityCache(cache_url)
    _age(cache, 3 * 3600)  # negatives stale, positives fresh
    simulator.reset_stats()
    results = list(KaleyraHook().lookup_rcs_many(numbers))
    assert _asked(simulator) == negatives
    assert all((r.source == "api") == (r.status == RCS_DISABLED) for r in results)
    _age(cache, 8 * 3600)  # now everything is stale: positives 11 h, negatives 8 h
    simulator.reset_stats()
    list(KaleyraHook().lookup_rcs_many(numbers))
    assert _asked(simulator) == len(numbers)
    cache.dispose()


def test_failed_is_never_served_from_the_cache(monkeypatch, make_simulator, cache_url):
    sim = make_simulator(error_5xx=1.0)
    hook = _connect(monkeypatch, sim, cache_url)
    numbers = _numbers(300)
    assert {r.status for r in hook.lookup_rcs_many(numbers)} == {FAILED}
    assert _count(CapabilityCache(cache_url)) == 0
    sim.configure(error_5xx=0.0)
    sim.reset_stats()
    results = list(KaleyraHook().lookup_rcs_many(numbers))
    assert _asked(sim) == 300
    assert all(r.source == "api" and r.status != FAILED for r in results)


def test_cache_false_bypasses_and_refresh_asks_again_and_rewrites(monkeypatch, simulator, cache_url):
    numbers = _numbers(200)
    hook = _connect(monkeypatch, simulator, cache_url)
    list(hook.lookup_rcs_many(numbers, cache=False))
    cache = CapabilityCache(cache_url)
    assert _count(cache) == 0  # bypassed: nothing read, nothing written
    list(hook.lookup_rcs_many(numbers))
    _age(cache, 100)
    simulator.reset_stats()
    results = list(hook.lookup_rcs_many(numbers, cache="refresh"))
    assert _asked(simulator) == 200 and {r.source for r in results} == {"api"}
    ages = cache.fresh(SID, numbers, HOUR, HOUR)
    assert len(ages) == 200 and max(age for _, age in ages.values()) < 50  # rewritten now
    cache.dispose()


def test_cache_true_without_url_names_the_setting(monkeypatch, simulator):
    hook = _connect(monkeypatch, simulator, "")
    assert {r.source for r in hook.lookup_rcs_many(_numbers(3))} == {"api"}  # off unless configured
    with pytest.raises(CapabilityCacheError, match="cache_url"):
        list(hook.lookup_rcs_many(_numbers(3), cache=True))
