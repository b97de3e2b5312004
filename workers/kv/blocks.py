"""The paged KV cache's bookkeeping: a pool of fixed-size blocks and the prefix cache over it. Pure Python.

The cache's memory is `num_blocks` blocks of `block_size` token positions each (the tensors live in
`workers.kv.cache`). A request holds a block table: block `i` of it stores the K/V of its tokens
`[i * block_size, (i + 1) * block_size)`. Block 0 is the scratch block: never handed out, it is where padding
rows and padding tokens write their throwaway K/V, and what unused block-table entries point to.

Prefix caching: once a block is full, it is registered under the hash of its token chain (its parent block's
hash and its own tokens, plus the content hash and offset of every image whose tokens it holds: image tokens
are one id repeated, so two prompts that differ only in an image differ only there), so the hash names the whole
prefix up to the block's end. A new request looks up the
hashes of its prompt's full blocks in order and takes every block found until the first miss, adding a
reference to each; those tokens are not prefilled again. A shared block is never written: only full blocks are
shared, a request writes only positions past the blocks it took, and the block holding the prompt's last token is
always computed (the model's output there gives the first token). A block whose last reference goes stays
cached but evictable; allocation takes never-cached free blocks first, then evicts the least recently released.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

SCRATCH_BLOCK = 0

# 16 tokens per block, as vLLM's default: small enough that the last, partly filled block of a request wastes
# little (half a block on average, 8 tokens), and that prefix reuse is fine-grained (agent histories share all
# but their tail); large enough that the block table stays short (a 4,096-token context is 256 entries) and a
# gathered block is a contiguous run of 16 x heads x head_dim elements.
DEFAULT_BLOCK_SIZE = 16

ROOT_HASH = b""


def chain_hash(parent: bytes, token_ids: Sequence[int], extra: bytes = b"") -> bytes:
    """The key of a full block: a 128-bit digest of the parent block's key, this block's token ids and `extra`
    (what the token ids do not say about the block's content: the images whose tokens it holds)."""
    digest = hashlib.blake2b(parent, digest_size=16)
    digest.update(b"".join(token_id.to_bytes(4, "little", signed=False) for token_id in token_ids))
    digest.update(extra)
    return digest.digest()


def prefix_hashes(
    token_ids: Sequence[int], block_size: int, num_blocks: int, extras: Sequence[bytes] = ()
) -> list[bytes]:
    """The chain hashes of the first `num_blocks` full blocks of `token_ids`; `extras[i]`, when given, is block
    i's `extra`."""
    hashes: list[bytes] = []
    parent = ROOT_HASH
    for index in range(num_blocks):
        extra = extras[index] if extras else b""
        parent = chain_hash(parent, token_ids[index * block_size : (index + 1) * block_size], extra)
        hashes.append(parent)
    return hashes


def blocks_for(num_tokens: int, block_size: int) -> int:
    """How many blocks hold `num_tokens` positions."""
    return -(-num_tokens // block_size)


class BlockPool:
    """The allocator: reference counts, the free list, and the prefix cache with its LRU of evictable blocks.

    Invariants: a block is exactly one of scratch, in use (reference count > 0), evictable (count 0, cached), or
    free (count 0, not cached); `num_free` counts evictable and free blocks, both of which `allocate` may hand out.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks (one is scratch), got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"kv_block_size must be at least 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._hashes: list[bytes | None] = [None] * num_blocks
        self._free = list(range(num_blocks - 1, SCRATCH_BLOCK, -1))  # a stack: the lowest block is used first
        self._evictable: OrderedDict[int, None] = OrderedDict()  # least recently released first
        self._cached: dict[bytes, int] = {}

    @property
    def capacity(self) -> int:
        """Blocks a request may ever hold: all but the scratch block."""
        return self.num_blocks - 1

    @property
    def num_free(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.capacity - self.num_free

    @property
    def num_cached(self) -> int:
        """Blocks registered in the prefix cache (in use or evictable)."""
        return len(self._cached)

    def allocate(self) -> int:
        """A block with one reference, for the caller to write. The caller checked `num_free` first."""
        if self._free:
            block = self._free.pop()
        elif self._evictable:
            block, _ = self._evictable.popitem(last=False)
            del self._cached[self._hashes[block]]
            self._hashes[block] = None
        else:
            raise RuntimeError("no free KV block; the scheduler must check num_free before allocating")
        self._ref_counts[block] = 1
        return block

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block, the last block first: a request's tail is evicted before its head."""
        for block in reversed(blocks):
            self._ref_counts[block] -= 1
            if self._ref_counts[block] > 0:
                continue
            if self._hashes[block] is None:
                self._free.append(block)
            else:
                self._evictable[block] = None

    def match_prefix(self, hashes: Sequence[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `hashes` that is cached, without taking them."""
        blocks: list[int] = []
        if not self.enable_prefix_caching:
            return blocks
        for block_hash in hashes:
            block = self._cached.get(block_hash)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def num_evictable(self, blocks: Sequence[int]) -> int:
        """How many of `blocks` are evictable now, so that taking them lowers `num_free`."""
        return sum(1 for block in blocks if self._ref_counts[block] == 0)

    def take(self, blocks: Sequence[int]) -> None:
        """Add a reference to each cached block (from `match_prefix`); an evictable one is in use again."""
        for block in blocks:
            if self._ref_counts[block] == 0:
                del self._evictable[block]
            self._ref_counts[block] += 1

    def register(self, block: int, block_hash: bytes) -> None:
        """Cache a block that was just filled. When another block already holds the same prefix, this one stays
        private (freed normally) and the cached one is kept."""
        if self.enable_prefix_caching and block_hash not in self._cached:
            self._cached[block_hash] = block
            self._hashes[block] = block_hash

    def ref_count(self, block: int) -> int:
        return self._ref_counts[block]


@dataclass(slots=True)
class PrefixStats:
    """Counters since the worker started: prompt tokens admitted, those found in the prefix cache, preemptions."""

    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_preemptions: int = 0

    def record(self, num_prompt_tokens: int, num_cached_tokens: int) -> None:
        self.num_prompt_tokens += num_prompt_tokens
        self.num_cached_tokens += num_cached_tokens
