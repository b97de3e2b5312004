"""Which weights of a decoder layer are split how, and the slice of each that a rank reads.

Megatron's layout, as vLLM and TGI use it: q/k/v (by heads) and the MLP's gate/up projections are split along
their output features (column-parallel: each rank computes its heads and its part of the MLP, with no
communication); o_proj and down_proj along their input features (row-parallel: each rank's partial sums are
added with one all-reduce). That is two all-reduces per layer. Everything else (embeddings, norms, the LM head,
rotary tables) is replicated: every rank holds it whole and computes the same values.
"""

from __future__ import annotations

import enum


class Split(enum.Enum):
    COLUMN = "column"  # rows of the [out, in] weight (and of the bias)
    COLUMN_PAIR = "column_pair"  # gate and up fused in one weight: the rank's part of each half, concatenated
    ROW = "row"  # columns of the weight; the bias is added once, after the all-reduce


# Linear layers by their attribute name inside a decoder layer (Llama, GLM, GLM-4, Qwen2 naming).
LAYOUT: dict[str, Split] = {
    "q_proj": Split.COLUMN,
    "k_proj": Split.COLUMN,
    "v_proj": Split.COLUMN,
    "gate_proj": Split.COLUMN,
    "up_proj": Split.COLUMN,
    "gate_up_proj": Split.COLUMN_PAIR,
    "o_proj": Split.ROW,
    "down_proj": Split.ROW,
}


def split_of(module_name: str) -> Split | None:
    """How the linear layer named `module_name` (e.g. "model.layers.3.self_attn.q_proj") is split, if it is."""
    return LAYOUT.get(module_name.rsplit(".", 1)[-1]) if ".layers." in module_name else None


def shard_range(width: int, rank: int, size: int) -> slice:
    """Rank `rank`'s contiguous share of `width` features; `width` divides by `size` (see `split.check_split`)."""
    share = width // size
    return slice(rank * share, (rank + 1) * share)
