"""A tensor-parallel replica: what every rank builds (`build_rank`); rank 0 starts one with `ranks.load_replica`.

Every rank joins the process group, loads its shard, and sizes its paged KV cache (blocks of its own KV heads,
num_key_value_heads / N) from its free memory; the ranks then agree on the smallest number of blocks (an
all-reduce MIN), so every rank's cache has the same blocks and rank 0's block tables and slot mappings address
all of them alike. Rank 0 reports the replica's facts to the gateway, with every rank's device and weight bytes.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from workers.kv.attention import ATTENTION_NAME
from workers.kv.cache import PagedKVCache
from workers.model.loader import fit_context, plan_cache, resolve_device, resolve_dtype, resolve_max_seq_len
from workers.model.support import check_supported
from workers.parallel.group import agree_on_min
from workers.parallel.loading import load_shard
from workers.protocol import RankInfo, WorkerConfig


@dataclasses.dataclass(frozen=True, slots=True)
class Rank:
    """One rank's model, KV cache and facts."""

    model: torch.nn.Module
    cache: PagedKVCache
    info: RankInfo
    max_seq_len: int  # the context limit, at most what the (agreed) cache holds


def rank_device(config: WorkerConfig, rank: int) -> torch.device:
    """The CPU, or the rank-th GPU of those the replica sees (CUDA_VISIBLE_DEVICES lists one per rank)."""
    device = resolve_device(config.device)
    if device.type != "cuda":
        return device
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    return device


def build_rank(config: WorkerConfig, rank: int, device: torch.device, group) -> Rank:
    """Load rank `rank`'s shard and allocate its KV cache; a collective, so every rank calls it at once."""
    # Only rank 0 turns hidden states into tokens (see `workers.parallel.follower`).
    shard = load_shard(config, rank, device, resolve_dtype(config.dtype, device), group, has_lm_head=rank == 0)
    check_supported(shard.model, ATTENTION_NAME)
    text_config = shard.model.config.get_text_config()
    max_seq_len = resolve_max_seq_len(config.max_seq_len, text_config)
    cache_dtype = shard.model.get_input_embeddings().weight.dtype
    spec = plan_cache(text_config, config, max_seq_len, cache_dtype, device)
    spec = dataclasses.replace(spec, num_blocks=agree_on_min(spec.num_blocks, device))
    max_seq_len = fit_context(max_seq_len, spec.num_tokens)  # the same on every rank, as the spec is
    info = RankInfo(
        rank=rank,
        pid=os.getpid(),
        device=str(device),
        weight_bytes=shard.weight_bytes,
        sharded_weight_bytes=shard.sharded_weight_bytes,
    )
    return Rank(model=shard.model, cache=PagedKVCache(spec), info=info, max_seq_len=max_seq_len)
