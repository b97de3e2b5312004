"""The block tables of a worker's requests over its block pool. Pure Python, like the scheduler that calls it.

A request's block table holds its positions, `block_size` per block (see `workers.kv.blocks`). Here a request is
admitted with the cached blocks of its prompt's prefix, its table grows as its tokens are scheduled, the blocks its
computed tokens fill are registered in the prefix cache (keyed by their tokens and the images among them), and its
blocks are released when it leaves or is preempted. Which request runs, and which is preempted, is the scheduler's
policy, not this module's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.kv.blocks import ROOT_HASH, BlockPool, blocks_for, chain_hash, prefix_hashes

if TYPE_CHECKING:
    from workers.engine.sequence import ImageSpan, Sequence


class BlockTables:
    """Operates on `Sequence.block_table`, `block_hashes`, `num_computed_tokens` and `num_cached_tokens`."""

    def __init__(self, pool: BlockPool) -> None:
        self.pool = pool

    def try_admit(self, seq: Sequence) -> bool:
        """Give `seq` the cached blocks of its prefix, if the blocks its whole prefill needs beyond them are free
        (taking an evictable cached block lowers the free count too); False leaves everything as it was."""
        pool = self.pool
        hashes = self._prefix_hashes(seq)
        cached = pool.match_prefix(hashes)
        needed = blocks_for(seq.prefill_target, pool.block_size) - len(cached) + pool.num_evictable(cached)
        if needed > pool.num_free:
            return False
        pool.take(cached)
        seq.block_table = list(cached)
        seq.block_hashes = hashes[: len(cached)]
        seq.num_cached_tokens = seq.num_computed_tokens = len(cached) * pool.block_size
        return True

    def room(self, seq: Sequence) -> int:
        """How many more tokens `seq` can be given now: the rest of its last block and every free block."""
        size = self.pool.block_size
        return len(seq.block_table) * size - seq.num_computed_tokens + self.pool.num_free * size

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Extend the table to hold `num_tokens` positions; the caller checked `room`."""
        for _ in range(blocks_for(num_tokens, self.pool.block_size) - len(seq.block_table)):
            seq.block_table.append(self.pool.allocate())

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register every block that the computed tokens filled since the last call in the prefix cache."""
        pool = self.pool
        if not pool.enable_prefix_caching:
            return
        size = pool.block_size
        for index in range(len(seq.block_hashes), seq.num_computed_tokens // size):
            parent = seq.block_hashes[-1] if seq.block_hashes else ROOT_HASH
            start, end = index * size, (index + 1) * size
            block_hash = chain_hash(parent, seq.token_ids(start, end), image_key(seq.images, start, end))
            seq.block_hashes.append(block_hash)
            pool.register(seq.block_table[index], block_hash)

    def release(self, seq: Sequence) -> None:
        """Drop the request's references; its cached blocks stay matchable until evicted."""
        self.pool.release(seq.block_table)
        seq.block_table = []

    def _prefix_hashes(self, seq: Sequence) -> list[bytes]:
        """Hashes of the full blocks before the last token to prefill (that one is always computed)."""
        if not self.pool.enable_prefix_caching:
            return []
        size = self.pool.block_size
        num_blocks = (seq.prefill_target - 1) // size
        extras = [image_key(seq.images, i * size, (i + 1) * size) for i in range(num_blocks)] if seq.images else []
        return prefix_hashes(seq.token_ids(0, num_blocks * size), size, num_blocks, extras)


def image_key(images: tuple[ImageSpan, ...], start: int, end: int) -> bytes:
    """What a block of positions [start, end) adds to its prefix-cache key for the images whose tokens it holds:
    each one's content hash and the offset of the block's first position in the image (as vLLM keys them)."""
    return b"".join(
        f"{image.content_hash}:{start - image.start};".encode() for image in images if image.overlaps(start, end)
    )
