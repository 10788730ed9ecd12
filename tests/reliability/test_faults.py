"""Faults survived: the hook over real HTTP against a simulator that misbehaves in every way it can.

Every input must come back exactly once, in order; every valid number's status must be the
simulator's true answer or ``failed`` with a reason; numbers Kaleyra did not get asked about
are ignored (and logged); phone numbers never appear whole in the warnings.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from typing import Any

import pytest

from airflow_provider_kaleyra.client.api import FAILED, INVALID, RCS_DISABLED, RCS_ENABLED
from airflow_provider_kaleyra.client.exceptions import KaleyraApiError
from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from kaleyra_simulator import rcs_answer
from kaleyra_simulator.config import FAULT_KINDS
from kaleyra_simulator.harness import free_port

AREAS = (212, 310, 415, 646, 702, 213, 305, 512, 617, 720)
EXCHANGES = (201, 555, 734, 919, 482)

# ~10% of requests hit a fault, spread over every kind the simulator has.
MIXED_FAULTS = {
    "error_5xx": 0.03,
    "reset": 0.015,
    "slow": 0.01,
    "truncated": 0.015,
    "bulk_missing": 0.015,
    "bulk_extra": 0.015,
    "rate_429": 0.015,
}


def build_audience(
    total: int, invalid_every: int | None = 25, duplicate_every: int | None = 23
) -> tuple[list[str], list[str | None]]:
    """``total`` inputs in mixed formats, with duplicates and invalid entries; returns (inputs, expected E.164)."""
    inputs: list[str] = []
    expected: list[str | None] = []
    bad = [
        "",
        "   ",
        "abc",
        "+1 415 000",
        "12345",
        "+999123456789",
        "+1 415 555 01",
        "0" * 70,
        "+1 (000) 000-0000",
    ]
    serial = 0
    while len(inputs) < total:
        i = len(inputs)
        if invalid_every and i % invalid_every == 7:
            inputs.append(bad[i % len(bad)])
            expected.append(None)
            continue
        if duplicate_every and i % duplicate_every == 11:
            # the same number as an earlier input, written another way
            j = next(k for k in range(i - 1, -1, -1) if expected[k])
            e164 = expected[j]
            inputs.append(f"00{e164[1:]}")
            expected.append(e164)
            continue
        area = AREAS[serial % len(AREAS)]
        exchange = EXCHANGES[(serial // len(AREAS)) % len(EXCHANGES)]
        line = serial // (len(AREAS) * len(EXCHANGES))
        serial += 1
        e164 = f"+1{area}{exchange}{line:04d}"
        style = serial % 4
        if style == 0:
            raw = e164
        elif style == 1:
            raw = f"+1 {area}-{exchange}-{line:04d}"
        elif style == 2:
            raw = f"({area}) {exchange} {line:04d}"  # national, read with default_region US
        else:
            raw = f" 1{area}.{exchange}.{line:04d} "
        inputs.append(raw)
        expected.append(e164)
    return inputs, expected


class ResponseLog:
    """A ``requests`` response hook: records status and Retry-After, and flips the simulator's
    Retry-After on every 429 so both kinds of 429 (with and without the header) are served."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.seen: Counter[str] = Counter()

    def __call__(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        self.seen[str(response.status_code)] += 1
        if response.status_code == 429:
            self.seen["429+retry-after" if "Retry-After" in response.headers else "429-no-retry-after"] += 1
            self.sim.configure(retry_after=not self.sim.config.retry_after)
        return response


def check_results(results: list[Any], inputs: list[str], expected: list[str | None]) -> Counter[str]:
    assert len(results) == len(inputs), "an input was lost or invented"
    statuses: Counter[str] = Counter()
    for index, (result, raw, e164) in enumerate(zip(results, inputs, expected)):
        assert result.input == raw, f"record {index} is for another input"
        statuses[result.status] += 1
        if e164 is None:
            assert result.status == INVALID and result.e164 is None and result.error, result
            continue
        assert result.e164 == e164, (index, raw, result)
        if result.status == FAILED:
            assert result.error, f"failed without a reason: {result}"
            continue
        truth = rcs_answer(e164)
        assert result.status == (RCS_ENABLED if truth["rcsEnabled"] else RCS_DISABLED), result
        assert (result.carrier_id, result.carrier_status) == (truth["carrierId"], truth["carrierStatus"]), (
            result
        )
        assert result.error is None
    return statuses


_DIGIT_RUN = re.compile(r"\d{7,}")


def assert_no_whole_numbers(texts: list[str], expected: list[str | None]) -> None:
    """No log line shows a test number whole: not as E.164, nor as its digits."""
    digits = {e[1:] for e in expected if e}
    digits |= {e[2:] for e in expected if e}  # national significant number of the +1 numbers
    for text in texts:
        for run in _DIGIT_RUN.findall(text):
            windows = {run[i : i + n] for n in (10, 11) for i in range(len(run) - n + 1)}
            assert not windows & digits, f"a whole phone number is logged: {text!r}"


def run_lookup(hook: KaleyraHook, inputs: list[str]) -> tuple[list[Any], float]:
    started = time.monotonic()
    results = list(hook.lookup_rcs_many(inputs))
    return results, time.monotonic() - started


def test_50k_lookup_survives_a_mix_of_every_fault(secret_simulator, use_connection, caplog, hook_logs):
    sim = secret_simulator(seed=20240611, slow_seconds=0.8, **MIXED_FAULTS)
    use_connection(sim.url, timeout=0.5, max_retries=4, retry_backoff=0.01, max_concurrency=8)
    inputs, expected = build_audience(50_000)
    hook = KaleyraHook()
    responses = ResponseLog(sim)
    hook.transport.session.hooks["response"].append(responses)

    with caplog.at_level(logging.WARNING):
        results, elapsed = run_lookup(hook, inputs)

    statuses = check_results(results, inputs, expected)
    stats = sim.stats()
    faults = stats["faults"]
    print(
        f"\n50k lookup under faults: {elapsed:.1f}s, statuses {dict(statuses)}, faults {faults}, "
        f"requests {stats['requests']}, client saw {dict(responses.seen)}"
    )
    assert elapsed < 60
    assert sum(faults.values()) >= 5, "the fault mix did not fire: the test proves nothing"
    # At-least-once with bounded retries: failures must stay rare at a 10% fault rate.
    assert statuses[FAILED] <= 0.02 * len(inputs), statuses
    if faults["bulk_extra"]:
        assert "not asked for" in hook_logs.text
    if faults["bulk_missing"]:
        assert "left out" in hook_logs.text
    assert_no_whole_numbers([r.getMessage() for r in caplog.records] + hook_logs.messages(), expected)
    # The simulator never saw an invalid number nor a duplicate in a bulk call (it would answer 400).
    assert stats["responses"].get("400", 0) == 0, stats["responses"]


def test_every_fault_kind_at_a_heavy_rate_still_accounts_for_every_input(
    secret_simulator, use_connection, caplog, hook_logs
):
    """A smaller audience with faults on ~60% of requests, so every kind certainly fires."""
    heavy = dict.fromkeys(MIXED_FAULTS, 0.1)
    heavy["bulk_missing"] = heavy["bulk_extra"] = 0.3
    sim = secret_simulator(seed=7, slow_seconds=0.6, **heavy)
    use_connection(sim.url, timeout=0.4, max_retries=6, retry_backoff=0.005, max_concurrency=8)
    inputs, expected = build_audience(6_000)
    hook = KaleyraHook()
    responses = ResponseLog(sim)
    hook.transport.session.hooks["response"].append(responses)

    with caplog.at_level(logging.WARNING):
        results, elapsed = run_lookup(hook, inputs)

    statuses = check_results(results, inputs, expected)
    stats = sim.stats()
    print(
        f"\nheavy faults: {elapsed:.1f}s, statuses {dict(statuses)}, faults {stats['faults']}, "
        f"client saw {dict(responses.seen)}"
    )
    for kind in FAULT_KINDS:
        assert stats["faults"][kind] > 0, f"fault {kind} never fired: {stats['faults']}"
    assert responses.seen["429+retry-after"] and responses.seen["429-no-retry-after"], responses.seen
    assert any(responses.seen[str(s)] for s in (500, 502, 503, 504))
    assert "not asked for" in hook_logs.text and "left out" in hook_logs.text
    assert_no_whole_numbers([r.getMessage() for r in caplog.records] + hook_logs.messages(), expected)
    # Results never hold a number that was not asked for.
    assert {r.e164 for r in results if r.e164} <= {e for e in expected if e}


def test_dead_endpoint_fails_in_bounded_time_with_a_clear_message(use_connection):
    port = free_port()  # nothing listens here any more
    use_connection(f"http://127.0.0.1:{port}", timeout=1, max_retries=2, retry_backoff=0.05)
    hook = KaleyraHook()
    started = time.monotonic()
    with pytest.raises(KaleyraApiError) as info:
        hook.lookup_rcs("+14155552671")
    elapsed = time.monotonic() - started
    assert elapsed < 30
    message = str(info.value)
    assert "gave up after 3 attempts" in message and "no answer from Kaleyra" in message, message
    assert hook.transport.requests_sent == 3

    # Many numbers against a dead endpoint: bounded, every input reported failed with the reason.
    inputs, expected = build_audience(1_200, invalid_every=None, duplicate_every=None)
    started = time.monotonic()
    results = list(hook.lookup_rcs_many(inputs))
    elapsed = time.monotonic() - started
    assert elapsed < 30
    assert len(results) == len(inputs)
    assert all(r.status == FAILED and "no answer from Kaleyra" in r.error for r in results)
    ok, text = hook.test_connection()
    assert ok is False and "no answer from Kaleyra" in text


def test_always_5xx_fails_in_bounded_time_with_status(secret_simulator, use_connection):
    sim = secret_simulator(error_5xx=1.0, seed=1)
    use_connection(sim.url, timeout=1, max_retries=2, retry_backoff=0.05)
    hook = KaleyraHook()
    started = time.monotonic()
    with pytest.raises(KaleyraApiError) as info:
        hook.lookup_rcs("+14155552671")
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert re.search(r"gave up after 3 attempts: Kaleyra answered .+ \| HTTP 50[0234]", message), message
    assert info.value.status in (500, 502, 503, 504)

    inputs, _ = build_audience(2_000, invalid_every=None, duplicate_every=None)
    started = time.monotonic()
    results = list(hook.lookup_rcs_many(inputs))
    elapsed = time.monotonic() - started
    assert elapsed < 30
    assert len(results) == len(inputs)
    assert all(r.status == FAILED and "gave up after 3 attempts" in r.error for r in results)
    # 4 bulk calls x 3 attempts: the retry budget is spent, never exceeded.
    assert sim.stats()["requests"]["rcs_bulk"] == 4 * 3
