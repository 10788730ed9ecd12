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
    normalize_block,
    normalize_with_phonenumbers,
    preclean,
)


def plain_loop(cleaned: list[Any]) -> list[Normalized]:
    """The baseline: plain phonenumbers on the pre-cleaned inputs (cleaning not charged to it)."""
    return [c if isinstance(c, Normalized) else normalize_with_phonenumbers(*c) for c in cleaned]


def fast_loop(inputs: list[tuple[str, str]]) -> list[Normalized]:
    return [normalize(raw, region) for raw, region in inputs]


def region_blocks(inputs: list[tuple[str, str]], size: int = 4096) -> list[tuple[list[str], str]]:
    """The inputs as blocks of one default region each (as an audience with one connection reads them)."""
    by_region: dict[str, list[str]] = {}
    for raw, region in inputs:
        by_region.setdefault(region, []).append(raw)
    return [
        (raws[start : start + size], region)
        for region, raws in by_region.items()
        for start in range(0, len(raws), size)
    ]


def block_loop(blocks: list[tuple[list[str], str]]) -> list[tuple[str | None, str | None]]:
    answers: list[tuple[str | None, str | None]] = []
    for raws, region in blocks:
        answers += zip(*normalize_block(raws, None, region))
    return answers


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
    # normalize_block, the pipeline's way, against normalize per input, same inputs, same run.
    blocks = region_blocks(inputs)
    expected = [tuple(normalize(raw, region)) for raws, region in blocks for raw in raws]
    block_t, row_t = [], []
    for _ in range(runs):
        elapsed, got = timed(lambda: block_loop(blocks))
        block_t.append(elapsed)
        row_t.append(timed(lambda: [normalize(raw, region) for raws, region in blocks for raw in raws])[0])
        if got != expected:
            raise AssertionError("normalize_block differs from normalize")
    del expected, got
    rows.append(
        row(
            "normalize",
            f"{count:,} mixed inputs, normalize_block",
            f"{count / median(block_t):,.0f}/s",
            f"normalize per input {count / median(row_t):,.0f}/s",
            f"{median(row_t) / median(block_t):.2f}",
            f"identical to normalize on all {count:,}; against plain phonenumbers "
            f"{plain_s / median(block_t):.2f}x",
        )
    )
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
