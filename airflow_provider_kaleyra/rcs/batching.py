"""How distinct numbers are split into API calls: the 100-500 rule, planned once."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import NamedTuple, TypeVar

from airflow_provider_kaleyra.client.api import BULK_MAX, BULK_MIN

T = TypeVar("T")


def plan_batch_sizes(n: int) -> list[int]:
    """Sizes of the calls for ``n`` distinct valid numbers: ``ceil(n / 500)`` bulk calls whose sizes
    differ by at most one (so each holds 100-500), or ``n`` single lookups below 100 (never padded)."""
    if n < 0:
        raise ValueError(f"number count must not be negative, got {n}")
    if n < BULK_MIN:
        return [1] * n
    count = math.ceil(n / BULK_MAX)
    size, bigger = divmod(n, count)
    return [size + 1] * bigger + [size] * (count - bigger)


def split(items: Iterable[T], sizes: Iterable[int]) -> Iterator[list[T]]:
    """Cut ``items`` into consecutive lists of the given sizes (streams; holds one list at a time)."""
    it = iter(items)
    for size in sizes:
        chunk = list(islice(it, size))
        if len(chunk) != size:
            raise ValueError(f"ran out of items: wanted {size}, got {len(chunk)}")
        yield chunk


def plan_batches(numbers: Sequence[T]) -> list[list[T]]:
    """``numbers`` (distinct, valid) cut into compliant calls: bulk lists, or one-number lists."""
    return list(split(numbers, plan_batch_sizes(len(numbers))))


# Numbers a stream keeps back to plan together at its end (about 0.1 s of normalization).
PLAN_AHEAD = 20 * BULK_MAX


def stream_block_batches(blocks: Iterable[list[T]]) -> Iterator[list[T]]:
    """``plan_batches`` for distinct numbers that come in lists (the engine's blocks), without waiting
    for the end: full bulk calls go out while more than ``PLAN_AHEAD`` numbers wait, and what waits
    at the end is planned by ``plan_batches``, so every call holds 100-500 numbers."""
    waiting: list[T] = []
    for block in blocks:
        waiting += block
        start = 0
        while len(waiting) - start > PLAN_AHEAD + BULK_MAX:
            yield waiting[start : start + BULK_MAX]
            start += BULK_MAX
        if start:
            del waiting[:start]
    yield from plan_batches(waiting)


class Shard(NamedTuple):
    """Which contiguous slice of the distinct numbers a task owns."""

    index: int
    count: int


def shard_slice(n: int, shard: Shard | None) -> tuple[int, int]:
    """``[start, stop)`` of ``shard`` among :func:`shard_bounds`; all for ``None``, empty past the last."""
    if shard is None:
        return 0, n
    bounds = shard_bounds(n, shard.count)
    return bounds[shard.index] if shard.index < len(bounds) else (n, n)


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges cutting ``n`` distinct numbers into at most ``shards`` balanced parts of
    at least ``BULK_MIN`` where ``n`` allows it, so sharding never turns bulk calls into single lookups."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    shards = max(1, min(shards, n // BULK_MIN or 1))
    size, bigger = divmod(n, shards)  # the first ``bigger`` shards hold one more
    return [(i * size + min(i, bigger), (i + 1) * size + min(i + 1, bigger)) for i in range(shards)]
