"""The engine's attention function, registered with transformers' `AttentionInterface`.

The model stays a Hugging Face model class; only its attention call is ours. The runner calls the decoder with
an `attn_metadata=AttentionMetadata(...)` keyword, which transformers forwards untouched through the decoder
layers to the attention function (every family the engine supports passes `**kwargs` all the way). There the
new K/V are written into the paged cache and the queries attend over each row's blocks by absolute position.
Each module also passes its own `sliding_window` (None on full-attention layers), `softcap` (Gemma 2) and
`scaling`; masks and scores for those come from `workers.kv.attention_variants`, which works from positions alone.

No mask function is registered in `AttentionMaskInterface` on purpose: for an implementation name that table
does not know, `create_causal_mask` returns None at once (the path transformers keeps for engine-owned
attention). Registering one would make it scan `position_ids` for packed sequences on every forward, a host
sync, only for our function to ignore the result. The causal mask is built here, once per forward, instead
(`attention_mask`), and the mask of each sliding window once per forward, by the first layer that needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface

from workers.kv.attention_variants import attend, visible_keys, window_matters
from workers.kv.cache import PagedKVCache

ATTENTION_NAME = "autoglm_paged"


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """Per-forward facts every layer's attention needs; built once per forward by the model runner."""

    cache: PagedKVCache
    slot_mapping: torch.Tensor  # [B, S] int64: the flat cache slot each new token's K/V goes to
    block_tables: torch.Tensor  # [B, N] int64: each row's blocks, padded with the scratch block
    positions: torch.Tensor  # [B, S] int64: absolute position of each new token
    kv_len: int  # attend over positions [0, kv_len) of each row
    mask: torch.Tensor | None  # [B, 1, S, kv_len] bool, True = attend; None = causal from position 0
    # The mask of each sliding window the layers use, built by the first layer that asks (see `mask_for`).
    window_masks: dict[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        cache: PagedKVCache,
        slot_mapping: torch.Tensor,
        block_tables: torch.Tensor,
        positions: torch.Tensor,
        kv_len: int,
    ) -> AttentionMetadata:
        """Metadata for rows of new tokens at `positions`, written at `slot_mapping`, reading `block_tables`."""
        starts_at_zero = positions.shape == (1, kv_len)  # one row holding the whole context: plain causal
        return cls(
            cache=cache,
            slot_mapping=slot_mapping,
            block_tables=block_tables,
            positions=positions,
            kv_len=kv_len,
            mask=None if starts_at_zero else attention_mask(positions, kv_len),
        )

    def mask_for(self, sliding_window: int | None) -> torch.Tensor | None:
        """The mask of a layer with this window (None: full attention); built once per forward per window."""
        if not window_matters(sliding_window, self.kv_len):
            return self.mask  # every key in [0, kv_len) lies inside the window of every real query
        mask = self.window_masks.get(sliding_window)
        if mask is None:
            key_positions = torch.arange(self.kv_len, device=self.positions.device)
            mask = visible_keys(self.positions, key_positions, sliding_window)  # [B, 1, S, kv_len]
            self.window_masks[sliding_window] = mask
        return mask


def attention_mask(positions: torch.Tensor, kv_len: int) -> torch.Tensor:
    """Which cache positions each query sees: [B, 1, S, kv_len] bool from the queries' positions [B, S].

    A key at position j is visible to a query at position p when j <= p. Positions past a row's own tokens are
    never visible (they are > p), which is what makes the scratch-padded block tables safe to read.
    """
    return visible_keys(positions, torch.arange(kv_len, device=positions.device), None)


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    attn_metadata: AttentionMetadata | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Write this step's K/V into the cache, then attend over the cache. Matches `sdpa_attention_forward`, and
    transformers' eager attention for a layer with a `sliding_window` or a logit `softcap` (Gemma 2).

    query: [B, Hq, S, D]; key, value: [B, Hkv, S, D] with rotary embeddings applied. Returns [B, S, Hq, D].
    """
    if attn_metadata is None:
        raise RuntimeError(f"the {ATTENTION_NAME!r} attention runs only inside the engine's model runner")
    if "s_aux" in kwargs:  # sinks (gpt-oss) are refused at load (`model.support`); this is the backstop
        raise ValueError(
            f"{type(module).__name__} passes attention sinks (s_aux), which the engine does not apply"
        )
    cache = attn_metadata.cache
    cache.write(module.layer_idx, attn_metadata.slot_mapping, key, value)
    cached_key, cached_value = cache.read(module.layer_idx, attn_metadata.block_tables, attn_metadata.kv_len)
    # cached_key, cached_value: [B, Hkv, kv_len, D]
    mask = attn_metadata.mask_for(sliding_window)
    output = attend(query, cached_key, cached_value, mask, scaling=scaling, softcap=softcap)
    return output.transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Make the engine's attention selectable as `attn_implementation=ATTENTION_NAME`; idempotent."""
    AttentionInterface.register(ATTENTION_NAME, paged_attention)
    return ATTENTION_NAME
