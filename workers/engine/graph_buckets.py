"""Which static shapes the decode forward runs at: the bucket grid for CUDA graphs (torch-free).

A CUDA graph replays fixed shapes, so decode runs at a few (batch rows, KV length) buckets instead of the exact
shape of each step. Rows are batch rows (`Sequence.slot`): bucket `rows = b` runs rows 0..b-1 whether or not each
holds a decoding request (the scheduler hands out the lowest free row, so running requests stay packed at the
low end, and small batches run small buckets). The KV bucket bounds how many cache
positions each row attends over, so a step's attention reads what the batch needs rather than the whole context.

The grid is small on purpose: every bucket is one captured graph holding its own activations' addresses.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

# Below this many rows every size gets its own bucket; above it, multiples of ROW_STEP (as vLLM and SGLang do:
# padding a large batch by a few rows costs little, a graph per size costs memory and capture time).
_SMALL_ROWS = (1, 2, 4, 8)
ROW_STEP = 16
MIN_KV_BUCKET = 128


@dataclass(frozen=True, slots=True)
class DecodeBuckets:
    """The (rows, kv_len) grid for a cache of `num_slots` slots holding up to `max_seq_len` positions each."""

    row_buckets: tuple[int, ...]  # ascending; the last is num_slots
    kv_buckets: tuple[int, ...]  # ascending; the last is max_seq_len

    @classmethod
    def plan(cls, num_slots: int, max_seq_len: int) -> DecodeBuckets:
        """Rows: 1, 2, 4, 8, then every ROW_STEP, then num_slots. KV lengths: powers of two from MIN_KV_BUCKET,
        then max_seq_len."""
        if num_slots < 1 or max_seq_len < 1:
            raise ValueError(f"need at least one slot and one position, got {num_slots} and {max_seq_len}")
        rows = {size for size in _SMALL_ROWS if size < num_slots}
        rows.update(range(ROW_STEP, num_slots, ROW_STEP))
        rows.add(num_slots)
        kv_lengths = {max_seq_len}
        length = MIN_KV_BUCKET
        while length < max_seq_len:
            kv_lengths.add(length)
            length *= 2
        return cls(row_buckets=tuple(sorted(rows)), kv_buckets=tuple(sorted(kv_lengths)))

    @property
    def num_buckets(self) -> int:
        return len(self.row_buckets) * len(self.kv_buckets)

    def pick(self, highest_slot: int, kv_len: int) -> tuple[int, int]:
        """The smallest bucket covering slots 0..highest_slot and KV positions [0, kv_len)."""
        if highest_slot < 0 or kv_len < 1:
            raise ValueError(f"bad decode shape: highest slot {highest_slot}, kv_len {kv_len}")
        return _ceiling(self.row_buckets, highest_slot + 1, "slot"), _ceiling(self.kv_buckets, kv_len, "kv_len")


def _ceiling(buckets: tuple[int, ...], value: int, what: str) -> int:
    index = bisect.bisect_left(buckets, value)
    if index == len(buckets):
        raise ValueError(f"{what} {value} is beyond the largest bucket {buckets[-1]}")
    return buckets[index]
