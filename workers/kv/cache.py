"""The engine's paged KV cache: per layer, a pool of fixed-size blocks for K and one for V.

Per layer, K and V are each one tensor [num_blocks, block_size, num_kv_heads, head_dim], allocated once at
start. Which block holds which request's tokens is the scheduler's business (`workers.kv.blocks`): a token at
absolute position `p` of a request with block table `t` lives at block `t[p // block_size]`, offset
`p % block_size`, i.e. at flat slot `t[p // block_size] * block_size + p % block_size`. Block 0 is scratch:
padding writes its throwaway K/V there and unused block-table entries point to it; no query ever attends to
it. This is the layout of vLLM's and flash-attention's paged kernels (`flash_attn_with_kvcache` with
`block_table`), so a GPU kernel can attend over it in place; the portable path gathers a request's blocks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from workers.kv.blocks import DEFAULT_BLOCK_SIZE, blocks_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """The cache's shape and placement; `num_bytes` is what `PagedKVCache` allocates.

    `num_kv_heads` is the heads this process holds (a tensor-parallel rank holds its share of the model's).
    """

    num_layers: int
    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def for_model(
        cls,
        config,
        num_blocks: int,
        dtype: torch.dtype,
        device: torch.device,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        tensor_parallel_size: int = 1,
    ) -> CacheSpec:
        """The spec for a transformers decoder config (`num_key_value_heads`, `head_dim` as its attention uses).

        With tensor parallelism each rank caches its own KV heads: `num_key_value_heads / tensor_parallel_size`,
        in the same number of blocks on every rank (the block tables are rank 0's).
        """
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        return cls(
            num_layers=config.num_hidden_layers,
            num_blocks=num_blocks,
            block_size=block_size,
            num_kv_heads=(getattr(config, "num_key_value_heads", None) or num_heads) // tensor_parallel_size,
            head_dim=head_dim,
            dtype=dtype,
            device=device,
        )

    @property
    def bytes_per_block(self) -> int:
        elements = self.block_size * self.num_kv_heads * self.head_dim
        return 2 * self.num_layers * elements * torch.empty((), dtype=self.dtype).element_size()

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block

    @property
    def num_tokens(self) -> int:
        """Token positions requests may use: every block but the scratch one."""
        return (self.num_blocks - 1) * self.block_size


def blocks_that_fit(
    bytes_per_block: int, block_size: int, free_bytes: int, memory_fraction: float, kv_cache_tokens: int | None
) -> int:
    """How many blocks the cache gets, the scratch block included: exactly enough for `kv_cache_tokens` when
    set, else as many as `memory_fraction` of the free memory holds. Fewer than 2 means not one token fits."""
    if kv_cache_tokens is not None:
        return 1 + blocks_for(kv_cache_tokens, block_size)
    return int(free_bytes * memory_fraction) // bytes_per_block


class PagedKVCache:
    """K and V block pools for every layer; written and read only by the attention function."""

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        shape = (spec.num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
        self.keys = [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for _ in range(spec.num_layers)]
        self.values = [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for _ in range(spec.num_layers)]
        logger.info(
            "KV cache: %s blocks x %s tokens (%s tokens), %.1f MiB on %s",
            spec.num_blocks - 1,
            spec.block_size,
            spec.num_tokens,
            spec.num_bytes / 2**20,
            spec.device,
        )

    def write(self, layer_idx: int, slot_mapping: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store the new tokens' K/V in place: row b, token i goes to flat slot slot_mapping[b, i]."""
        # slot_mapping: [B, S]; key, value: [B, Hkv, S, D] as the attention module produced them
        _, _, num_heads, head_dim = self.keys[layer_idx].shape
        slots = slot_mapping.reshape(-1)
        self.keys[layer_idx].view(-1, num_heads, head_dim).index_copy_(0, slots, _flat(key))
        self.values[layer_idx].view(-1, num_heads, head_dim).index_copy_(0, slots, _flat(value))

    def read(self, layer_idx: int, block_tables: torch.Tensor, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of positions [0, kv_len) of each row's blocks, as [B, Hkv, kv_len, D] (gathered: a copy).

        block_tables: [B, N] int64 with N * block_size >= kv_len; entries past a row's blocks point to scratch.
        """
        num_blocks = blocks_for(kv_len, self.spec.block_size)
        tables = block_tables[:, :num_blocks]
        # [B, N, block_size, Hkv, D] -> [B, N * block_size, Hkv, D] -> [B, Hkv, kv_len, D]
        key = self.keys[layer_idx][tables].flatten(1, 2)[:, :kv_len]
        value = self.values[layer_idx][tables].flatten(1, 2)[:, :kv_len]
        return key.transpose(1, 2), value.transpose(1, 2)


def _flat(states: torch.Tensor) -> torch.Tensor:
    # [B, Hkv, S, D] -> [B * S, Hkv, D], token-major like the slot mapping
    return states.transpose(1, 2).reshape(-1, states.shape[1], states.shape[3])
