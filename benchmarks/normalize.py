"""``normalize``: ``normalize`` against a plain ``phonenumbers`` parse/validate/format loop on
the same mixed inputs (identical answers checked on every input)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import phonenumbers
from common import Row, log, median, row
from inputs import mixed_inputs

from airflow_provider_kaleyra.numbers import fastphone as _fastphone
from airflow_provider_kaleyra.numbers.normalize import (
    Normalized,
    normalize,
    normalize_with_phonenumbers,
    preclean,
)


def plain_loop(cleaned: list[Any]) -> list[Normalized]:
    """The baseline: plain phonenumbers on the pre-cleaned inputs (cleaning not charged to it)."""
    return [c if isinstance(c, Normalized) else normalize_with_phonenumbers(*c) for c in cleaned]


def fast_loop(inputs: list[tuple[str, str]]) -> list[Normalized]:
    return [normalize(raw, region) for raw, region in inputs]


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def bench_normalize(quick: bool, runs: int) -> list[Row]:
    count = 100_000 if quick else 1_000_000
    inputs = mixed_inputs(count)
    cleaned = [preclean(raw, region) for raw, region in inputs]
    warm = mixed_inputs(20_000, seed=99)  # compile patterns / load metadata for both sides first
    plain_loop([preclean(r, g) for r, g in warm])
    fast_loop(warm)
    plain_t, fast_t = [], []
    for run in range(runs):
        elapsed, expected = timed(lambda: plain_loop(cleaned))
        plain_t.append(elapsed)
        elapsed, got = timed(lambda: fast_loop(inputs))
        fast_t.append(elapsed)
        if got != expected:
            bad = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
            raise AssertionError(
                f"normalize differs from plain phonenumbers on {inputs[bad]!r}: {got[bad]} != {expected[bad]}"
            )
        log(f"normalize run {run + 1}: plain {count / plain_t[-1]:,.0f}/s, fast {count / fast_t[-1]:,.0f}/s")
        del expected, got
    valid = sum(1 for n in fast_loop(inputs) if n.e164)
    on_fast_path = sum(
        1 for c in cleaned if not isinstance(c, Normalized) and _fastphone.parse(*c) is not None
    )
    distinct = len({raw for raw, _ in inputs})
    plain_s, fast_s = median(plain_t), median(fast_t)
    note = (
        f"identical on all {count:,} inputs; {distinct / count:.1%} distinct, {valid / count:.1%} valid, "
        f"{on_fast_path / count:.1%} on the fast path"
    )
    rows = [
        row(
            "normalize",
            f"{count:,} mixed inputs",
            f"{count / fast_s:,.0f}/s",
            f"plain phonenumbers {count / plain_s:,.0f}/s",
            f"{plain_s / fast_s:.2f}",
            note,
        )
    ]
    # The same against phonenumbers with its own compiled-pattern cache switched on.
    sub = min(count, 250_000)
    phonenumbers.enable_pattern_cache()
    try:
        plain_loop(cleaned[:20_000])
        cached_t, fast_sub_t = [], []
        for _ in range(runs):
            cached_t.append(timed(lambda: plain_loop(cleaned[:sub]))[0])
            fast_sub_t.append(timed(lambda: fast_loop(inputs[:sub]))[0])
    finally:
        phonenumbers.re_util._COMPILED_PATTERNS = None  # back to phonenumbers' default
    rows.append(
        row(
            "normalize",
            f"first {sub:,} of them",
            f"{sub / median(fast_sub_t):,.0f}/s",
            f"phonenumbers + enable_pattern_cache() {sub / median(cached_t):,.0f}/s",
            f"{median(cached_t) / median(fast_sub_t):.2f}",
            "a stronger baseline than the plain loop",
        )
    )
    return rows
