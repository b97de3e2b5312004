"""The engine's KV cache: one slot per running request, laid out for batched decode.

Per layer, K and V are each one tensor [num_slots, max_seq_len + 1, num_kv_heads, head_dim], allocated once at
start. A request owns slot `s` from admission to finish and its token at absolute position `p` lives at
`[s, p]`. The extra position `max_seq_len` is scratch: static-shape decode (CUDA graphs) runs every slot of its
bucket, and the rows with no decoding request write their throwaway K/V there, where no query ever looks.
This is the layout of flash-attention's `flash_attn_with_kvcache` (with `cache_batch_idx` = slots), so a GPU
kernel can attend over it in place; the portable path uses SDPA on views or gathers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """The cache's shape and placement; `num_bytes` is what `SlottedKVCache` allocates."""

    num_layers: int
    num_slots: int
    max_seq_len: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def for_model(
        cls,
        config,
        num_slots: int,
        max_seq_len: int,
        dtype: torch.dtype,
        device: torch.device,
        *,
        tensor_parallel_size: int = 1,
    ) -> CacheSpec:
        """The spec for a transformers decoder config (`num_key_value_heads`, `head_dim` as its attention uses).

        With tensor parallelism each rank caches its own KV heads: `num_key_value_heads / tensor_parallel_size`.
        """
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        return cls(
            num_layers=config.num_hidden_layers,
            num_slots=num_slots,
            max_seq_len=max_seq_len,
            num_kv_heads=(getattr(config, "num_key_value_heads", None) or num_heads) // tensor_parallel_size,
            head_dim=head_dim,
            dtype=dtype,
            device=device,
        )

    @property
    def scratch_position(self) -> int:
        """The position padded decode rows write to; never attended (queries see positions < max_seq_len)."""
        return self.max_seq_len

    @property
    def bytes_per_slot(self) -> int:
        elements = (self.max_seq_len + 1) * self.num_kv_heads * self.head_dim
        return 2 * self.num_layers * elements * torch.empty((), dtype=self.dtype).element_size()

    @property
    def num_bytes(self) -> int:
        return self.num_slots * self.bytes_per_slot


def slots_that_fit(bytes_per_slot: int, free_bytes: int, memory_fraction: float, max_slots: int) -> int:
    """How many slots the cache gets: as many as `memory_fraction` of the free memory holds, at most `max_slots`.

    Zero means not even one request of the full context fits; the caller refuses to start.
    """
    return max(0, min(max_slots, int(free_bytes * memory_fraction) // bytes_per_slot))


class SlottedKVCache:
    """K and V storage for every layer; written and read only by the attention function."""

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        shape = (spec.num_slots, spec.max_seq_len + 1, spec.num_kv_heads, spec.head_dim)
        self.keys = [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for _ in range(spec.num_layers)]
        self.values = [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for _ in range(spec.num_layers)]
        logger.info(
            "KV cache: %s slots x %s tokens, %.1f MiB on %s",
            spec.num_slots,
            spec.max_seq_len,
            spec.num_bytes / 2**20,
            spec.device,
        )

    def write(
        self, layer_idx: int, slots: torch.Tensor, positions: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> None:
        """Store the new tokens' K/V in place: row b, token i goes to [slots[b], positions[b, i]]."""
        # slots: [B]; positions: [B, S]; key, value: [B, Hkv, S, D] as the attention module produced them
        index = (slots[:, None], positions)
        self.keys[layer_idx].index_put_(index, key.transpose(1, 2))
        self.values[layer_idx].index_put_(index, value.transpose(1, 2))

    def read(
        self, layer_idx: int, slots: torch.Tensor, kv_len: int, first_slot: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of positions [0, kv_len) of the given slots, as [B, Hkv, kv_len, D].

        With `first_slot` set the slots are known to be first_slot, first_slot + 1, ..., and the result is a view
        of the cache; otherwise the rows are gathered (a copy of B * kv_len tokens).
        """
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if first_slot is not None:
            rows = slice(first_slot, first_slot + slots.shape[0])
            key, value = keys[rows, :kv_len], values[rows, :kv_len]
        else:
            key, value = keys[slots, :kv_len], values[slots, :kv_len]
        # key, value: [B, kv_len, Hkv, D] -> [B, Hkv, kv_len, D] (a strided view, as SDPA accepts)
        return key.transpose(1, 2), value.transpose(1, 2)
