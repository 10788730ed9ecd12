"""``baselines``: ``lookup_rcs_many`` against what a user would write otherwise: a loop of single
lookups with plain ``requests``, and bulk calls one after another."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import requests
from common import (
    LATENCY,
    Row,
    concurrency_for,
    expected_status,
    hook_lookup,
    log,
    median,
    row,
    set_connection,
    warm_simulator,
)
from inputs import valid_e164_numbers

from kaleyra_simulator.config import DEFAULT_API_KEY, DEFAULT_SID
from kaleyra_simulator.harness import SimulatorProcess


def single_lookup_loop(url: str, numbers: list[str]) -> tuple[float, int, int]:
    """A loop of single lookups with plain requests (one keep-alive session; obeys 429 Retry-After)."""
    session = requests.Session()
    headers = {"api-key": DEFAULT_API_KEY}
    sent = 0
    answers: dict[str, Any] = {}
    start = time.perf_counter()
    for number in numbers:
        while True:
            sent += 1
            answer = session.get(
                f"{url}/v1/{DEFAULT_SID}/rcs/lookup/{quote(number, safe='')}", headers=headers, timeout=30
            )
            if answer.status_code == 429:
                time.sleep(float(answer.headers.get("Retry-After", "1")))
                continue
            answers[number] = answer.json()["data"]["rcsEnabled"] if answer.ok else None
            break
    return time.perf_counter() - start, sent, _lost(numbers, answers)


def _lost(numbers: list[str], answers: dict[str, Any]) -> int:
    """Numbers without the simulator's answer (checked after the clock stops)."""
    return sum(
        1
        for n in numbers
        if answers.get(n) is None or ("rcs_enabled" if answers[n] else "rcs_disabled") != expected_status(n)
    )


def sequential_bulk(url: str, numbers: list[str]) -> tuple[float, int, int]:
    """Bulk calls of 500, one after another, with plain requests (obeys 429 Retry-After)."""
    session = requests.Session()
    headers = {"api-key": DEFAULT_API_KEY}
    sent = 0
    answers: dict[str, Any] = {}
    start = time.perf_counter()
    for first in range(0, len(numbers), 500):
        chunk = numbers[first : first + 500]
        while True:
            sent += 1
            answer = session.post(
                f"{url}/v1/{DEFAULT_SID}/rcs/lookup",
                json={"deviceAddresses": chunk},
                headers=headers,
                timeout=30,
            )
            if answer.status_code == 429:
                time.sleep(float(answer.headers.get("Retry-After", "1")))
                continue
            if answer.ok:
                answers.update((d["deviceAddress"], d["rcsEnabled"]) for d in answer.json()["devices"])
            break
    return time.perf_counter() - start, sent, _lost(numbers, answers)


def bench_baselines(quick: bool, runs: int) -> list[Row]:
    rate = 20
    count, single_count = (10_000, 50) if quick else (50_000, 200)
    numbers = valid_e164_numbers(count, seed=23)
    rows = []
    with SimulatorProcess(latency=LATENCY) as sim:
        warm_simulator(sim, numbers)
        sim.configure(latency=LATENCY, rate_limit=rate)
        set_connection(sim.url, rate_limit=rate, max_concurrency=concurrency_for(rate))
        hook_t, bulk_t, single_t = [], [], []
        hook_req = bulk_req = single_req = 0
        lost = 0
        for run in range(runs):
            sim.reset()
            elapsed, hook_req, lost_hook = hook_lookup(numbers)
            hook_t.append(elapsed)
            sim.reset()
            elapsed, bulk_req, lost_bulk = sequential_bulk(sim.url, numbers)
            bulk_t.append(elapsed)
            sim.reset()
            elapsed, single_req, lost_single = single_lookup_loop(sim.url, numbers[:single_count])
            single_t.append(elapsed)
            lost += lost_hook + lost_bulk + lost_single
            log(
                f"baselines run {run + 1}: hook {hook_t[-1]:.1f}s, sequential bulk {bulk_t[-1]:.1f}s, "
                f"single loop {single_t[-1]:.1f}s for {single_count}"
            )
    hook_s, bulk_s = median(hook_t), median(bulk_t)
    single_s = median(single_t) * count / single_count  # the loop is sequential: time is linear in numbers
    case = f"R={rate}/s, 150 ms, {count:,} numbers"
    rows.append(
        row(
            "baselines",
            f"{case}: lookup_rcs_many",
            f"{hook_s:.1f} s, {hook_req} requests",
            "-",
            "1.00",
            f"{count / hook_s:,.0f} numbers/s; numbers lost in all runs: {lost}",
        )
    )
    rows.append(
        row(
            "baselines",
            f"{case}: sequential bulk calls",
            f"{bulk_s:.1f} s, {bulk_req} requests",
            "lookup_rcs_many",
            f"time x{bulk_s / hook_s:.1f}, requests x{bulk_req / hook_req:.1f}",
            "plain requests, one call at a time",
        )
    )
    rows.append(
        row(
            "baselines",
            f"{case}: single-lookup loop",
            f"{single_s:,.0f} s, {count:,} requests (extrapolated)",
            "lookup_rcs_many",
            f"time x{single_s / hook_s:,.0f}, requests x{count / hook_req:,.0f}",
            f"measured on {single_count} numbers ({median(single_t):.1f} s), scaled linearly",
        )
    )
    return rows
