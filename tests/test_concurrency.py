"""Calls in flight follow the rate limit and the observed latency (Little's law), capped."""

from __future__ import annotations

import threading
import time

import pytest

from airflow_provider_kaleyra.client.pacing import EXTRA, HEADROOM, INITIAL_LATENCY, InFlight
from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from airflow_provider_kaleyra.rcs.answers import Answer

pytest_plugins = ["conftest_airflow"]


def test_limit_is_rate_times_latency_with_headroom_and_capped():
    control = InFlight(rate=100, cap=64)
    assert control.limit == round(100 * INITIAL_LATENCY * HEADROOM) + EXTRA  # before any answer
    control.observe(0.150)
    assert control.limit == 23 + EXTRA  # ceil(100 x 0.15 x 1.5) = 23
    for _ in range(50):
        control.observe(0.010)  # the API got fast: fewer in flight carry the same rate
    assert control.limit == 2 + EXTRA
    for _ in range(50):
        control.observe(2.0)  # the API got slow: more in flight, never more than the cap
    assert control.limit == 64
    assert InFlight(rate=20, cap=8).limit == 8  # the cap binds
    assert InFlight(rate=0, cap=8).limit == 8  # no rate limit: only the cap


def test_one_slow_answer_moves_the_estimate_only_a_little():
    control = InFlight(rate=100, cap=64)
    for _ in range(20):
        control.observe(0.1)
    before = control.limit
    control.observe(5.0)
    assert control.limit <= before * 2 + EXTRA
    control.observe(float("nan"))
    control.observe(-1.0)
    assert control.samples == 21


@pytest.mark.parametrize(("rate", "latency"), [(100, 0.05), (40, 0.1)])
def test_lookup_batches_keeps_littles_law_in_flight_with_threads_only_as_needed(
    kaleyra_conn, monkeypatch, rate, latency
):
    """A fake call that takes ``latency`` (reported as the transport would): the calls in flight
    stay at the controller's limit, far below the cap, and no more threads are started."""
    hook = KaleyraHook()
    hook.in_flight = InFlight(rate=rate, cap=64, latency=latency)
    lock = threading.Lock()
    now = peak = 0
    threads: set[str] = set()

    def fake_answer(batch, retry_missing=True):
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
            threads.add(threading.current_thread().name)
        time.sleep(latency)
        hook.in_flight.observe(latency)
        with lock:
            now -= 1
        return {number: Answer("rcs_enabled") for number in batch}

    monkeypatch.setattr(hook, "_answer_batch", fake_answer)
    batches = [[f"+1415555{i:04d}"] for i in range(300)]
    answers = list(hook.lookup_batches(batches))
    assert [next(iter(a)) for a in answers] == [b[0] for b in batches]  # in batch order
    expected = InFlight(rate=rate, cap=64, latency=latency).limit
    assert peak == expected < 64
    assert len(threads) <= expected
