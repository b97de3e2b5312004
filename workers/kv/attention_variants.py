"""Which keys a query sees and how its scores are formed: the per-layer variants of the checkpoints people run.

Everything here works from absolute token positions, never from where K/V are stored, so it applies unchanged
whatever layout the cache uses (slots or blocks): the caller gathers a layer's keys and says at which absolute
position each one sits.

- Sliding windows (Mistral, Phi-3, Qwen2/Qwen3 with `use_sliding_window`, the local layers of Gemma 2 and 3): a
  query at position p sees the keys at positions j with p - window < j <= p, the rule of transformers'
  `sliding_window_overlay` (the window counts the query's own token). Which layers slide is the model's
  business: each attention module passes its own `sliding_window` (None on a full-attention layer).
- Logit soft-capping (Gemma 2's `attn_logit_softcapping`): scores become cap * tanh(scores / cap) before the
  softmax. SDPA has no hook for that, so such layers compute their scores explicitly.
- Score scaling (`query_pre_attn_scalar`): the module's `scaling` is used as given.
"""

from __future__ import annotations

import torch


def visible_keys(
    query_positions: torch.Tensor, key_positions: torch.Tensor, sliding_window: int | None
) -> torch.Tensor:
    """The attention mask, True where a query may see a key: causal, and inside the window when there is one.

    query_positions: [B, S] absolute positions of the queries; key_positions: [K] or [B, K] absolute positions of
    the keys the attention reads. Returns [B, 1, S, K] bool (broadcast over heads, as SDPA takes it).
    """
    if key_positions.dim() == 1:
        key_positions = key_positions[None]
    keys = key_positions[:, None, :]  # [B or 1, 1, K]
    queries = query_positions[:, :, None]  # [B, S, 1]
    mask = keys <= queries
    if sliding_window is not None:
        mask &= keys > queries - sliding_window
    return mask[:, None]


def window_matters(sliding_window: int | None, kv_len: int) -> bool:
    """Whether a window can hide a key when every query sits below `kv_len`: a host-side test, no device sync."""
    return sliding_window is not None and sliding_window < kv_len


def soft_cap(scores: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(scores / cap): Gemma 2's attention-logit and final-logit soft-capping."""
    return torch.tanh(scores / cap) * cap


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scaling: float | None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention of `query` over `key`/`value` under `mask` (None: causal with query i at key i, S == K).

    query: [B, Hq, S, D]; key, value: [B, Hkv, K, D] (Hq a multiple of Hkv); mask: [B, 1, S, K] bool, True =
    attend. Returns [B, Hq, S, D]. Without soft-capping this is SDPA; with it the scores are formed explicitly
    as transformers' eager attention forms them (matmul in the input dtype, softmax in float32).
    """
    if softcap is None:
        return torch.nn.functional.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=mask,
            is_causal=mask is None and query.shape[2] > 1,
            scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )
    num_groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(num_groups, dim=1)
    value = value.repeat_interleave(num_groups, dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = soft_cap(torch.matmul(query, key.transpose(2, 3)) * scale, softcap)  # [B, Hq, S, K]
    if mask is None:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    # A row with no visible key (a padding row outside every window) gives NaN; zero it, as SDPA does.
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).nan_to_num(0.0).to(query.dtype)
    return torch.matmul(weights, value)
