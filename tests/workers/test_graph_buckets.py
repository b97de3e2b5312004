"""The decode bucket grid (torch-free): every step's shape maps to the smallest bucket that covers it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.engine.graph_buckets import MIN_KV_BUCKET, DecodeBuckets


def test_grid_for_a_typical_gpu_worker() -> None:
    buckets = DecodeBuckets.plan(num_slots=256, max_seq_len=512)
    assert buckets.row_buckets[:6] == (1, 2, 4, 8, 16, 32)
    assert buckets.row_buckets[-2:] == (240, 256)
    assert buckets.kv_buckets == (128, 256, 512)
    assert buckets.num_buckets == len(buckets.row_buckets) * 3


def test_grid_ends_at_the_cache_size_even_off_the_step() -> None:
    buckets = DecodeBuckets.plan(num_slots=20, max_seq_len=1000)
    assert buckets.row_buckets == (1, 2, 4, 8, 16, 20)
    assert buckets.kv_buckets == (128, 256, 512, 1000)
    assert DecodeBuckets.plan(num_slots=1, max_seq_len=64) == DecodeBuckets(row_buckets=(1,), kv_buckets=(64,))


def test_pick_takes_the_smallest_covering_bucket() -> None:
    buckets = DecodeBuckets.plan(num_slots=64, max_seq_len=4096)
    assert buckets.pick(highest_slot=0, kv_len=1) == (1, MIN_KV_BUCKET)
    assert buckets.pick(highest_slot=4, kv_len=129) == (8, 256)
    assert buckets.pick(highest_slot=16, kv_len=4096) == (32, 4096)
    with pytest.raises(ValueError, match="slot 65 is beyond"):
        buckets.pick(highest_slot=64, kv_len=10)
    with pytest.raises(ValueError, match="kv_len 4097 is beyond"):
        buckets.pick(highest_slot=0, kv_len=4097)


def test_plan_refuses_an_empty_cache() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        DecodeBuckets.plan(num_slots=0, max_seq_len=128)


@given(
    num_slots=st.integers(1, 512),
    max_seq_len=st.integers(1, 1 << 17),
    data=st.data(),
)
def test_every_shape_has_a_minimal_covering_bucket(num_slots: int, max_seq_len: int, data) -> None:
    buckets = DecodeBuckets.plan(num_slots, max_seq_len)
    highest_slot = data.draw(st.integers(0, num_slots - 1))
    kv_len = data.draw(st.integers(1, max_seq_len))
    rows, kv = buckets.pick(highest_slot, kv_len)
    assert rows > highest_slot and kv >= kv_len
    smaller_rows = [b for b in buckets.row_buckets if b < rows]
    smaller_kv = [b for b in buckets.kv_buckets if b < kv]
    assert not smaller_rows or smaller_rows[-1] <= highest_slot
    assert not smaller_kv or smaller_kv[-1] < kv_len
    # The grid stays small enough to capture: rows grow by 16 past 8, KV lengths double.
    assert len(buckets.row_buckets) <= 4 + num_slots // 16 + 1
    assert len(buckets.kv_buckets) <= 12
