import math

import pytest
from hypothesis import given, settings, strategies as st

from airflow_provider_kaleyra.client.api import BULK_MAX, BULK_MIN
from airflow_provider_kaleyra.rcs.batching import (
    Shard,
    plan_batch_sizes,
    plan_batches,
    shard_bounds,
    shard_slice,
    split,
)


@pytest.mark.parametrize("n", range(0, BULK_MIN))
def test_fewer_than_the_bulk_minimum_are_single_lookups(n):
    assert plan_batch_sizes(n) == [1] * n


def test_every_count_up_to_100k_is_planned_compliantly():
    # Exhaustive over every N, not sampled: the rule is cheap to check.
    for n in range(BULK_MIN, 100_001):
        sizes = plan_batch_sizes(n)
        assert sum(sizes) == n
        assert len(sizes) == math.ceil(n / BULK_MAX)
        assert min(sizes) >= BULK_MIN and max(sizes) <= BULK_MAX
        assert max(sizes) - min(sizes) <= 1


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=5_000_000))
def test_plan_holds_for_large_audiences(n):
    sizes = plan_batch_sizes(n)
    assert sum(sizes) == n
    if n >= BULK_MIN:
        assert all(BULK_MIN <= s <= BULK_MAX for s in sizes)
        assert len(sizes) == math.ceil(n / BULK_MAX)


@settings(max_examples=200)
@given(st.lists(st.integers(), unique=True, max_size=3_000))
def test_batches_cover_each_number_exactly_once(numbers):
    batches = plan_batches(numbers)
    assert [x for batch in batches for x in batch] == numbers


def test_negative_count_is_refused():
    with pytest.raises(ValueError, match="negative"):
        plan_batch_sizes(-1)


def test_split_refuses_short_input():
    with pytest.raises(ValueError, match="ran out"):
        list(split([1, 2], [3]))


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=200_000), st.integers(min_value=1, max_value=64))
def test_shards_are_contiguous_and_never_below_the_bulk_minimum(n, shards):
    bounds = shard_bounds(n, shards)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert len(bounds) <= shards
    if n >= BULK_MIN:
        assert all(stop - start >= BULK_MIN for start, stop in bounds)


def test_shard_count_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        shard_bounds(10, 0)


def test_shard_slice_is_the_shard_s_bounds_all_without_a_shard_and_empty_past_the_last():
    assert shard_slice(1000, None) == (0, 1000)
    assert [shard_slice(1000, Shard(i, 4)) for i in range(4)] == shard_bounds(1000, 4)
    assert shard_slice(150, Shard(1, 4)) == (150, 150)  # 150 numbers make one shard: the others have none
