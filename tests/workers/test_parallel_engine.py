"""The engine over a tensor-parallel replica: this process is rank 0 and starts rank 1 (gloo on 127.0.0.1).

Greedy tokens equal transformers' `generate()` under chunked prefill and continuous batching, and under the paged
cache's preemptions and prefix-cache hits with static decode; sampled tokens with a seed, and nf4 tokens, equal
those of the same engine over the whole model (tp=1).
"""

from __future__ import annotations

import os
import time

import pytest

from tests.workers.factories import make_submit, random_prompt, reference, run_to_end, tokens_of
from workers.protocol import SamplingParams


def _start(config):
    from workers.process.load import start_engine

    engine, info = start_engine(config, lambda stage, fraction: None)
    return engine, info


def _stop(engine) -> list[int]:
    """Stop the replica's other ranks; returns their pids."""
    ranks = engine.runner.mirror
    pids = [process.pid for process in ranks.processes]
    ranks.stop()
    return pids


def _arrivals(vocab_size: int) -> dict[int, list]:
    prompts = [random_prompt(length, seed, vocab_size) for seed, length in enumerate((5, 23, 40, 9))]
    sampled = SamplingParams(temperature=0.8, top_p=0.9, seed=7)
    return {
        0: [make_submit("a", prompts[0], 12), make_submit("b", prompts[1], 6)],
        2: [make_submit("c", prompts[2], 9), make_submit("s", prompts[3], 10, sampling=sampled)],
    }


@pytest.mark.parametrize("architecture", ["glm", "llama"])
def test_two_ranks_give_the_tokens_of_generate(worker_config, reference_model, architecture: str) -> None:
    engine, info = _start(worker_config(architecture, tensor_parallel_size=2, collective_timeout=60))
    try:
        assert [rank.rank for rank in info.ranks] == [0, 1]
        lm_head = engine.runner.lm_head.weight
        # rank 1 computes no logits, so it holds no LM head
        assert info.ranks[0].weight_bytes - info.ranks[1].weight_bytes == lm_head.numel() * lm_head.element_size()
        assert engine.runner.cache.spec.num_kv_heads == 1  # 2 KV heads, split 2 ways
        arrivals = _arrivals(info.vocab_size)
        deltas = run_to_end(engine, arrivals)
    finally:
        pids = _stop(engine)
    model = reference_model(architecture)
    for submit in [*arrivals[0], arrivals[2][0]]:
        expected = reference(model, submit.prompt_ids, submit.stopping.max_new_tokens)
        assert tokens_of(deltas[submit.request_id]) == expected, submit.request_id
    whole, _ = _start(worker_config(architecture))
    assert tokens_of(run_to_end(whole, _arrivals(info.vocab_size))["s"]) == tokens_of(deltas["s"])
    _assert_gone(pids)


def test_two_ranks_share_prefixes_and_recompute_preempted_requests(worker_config, reference_model) -> None:
    """Rank 0's block pool decides prefix hits and preemptions; rank 1 only follows the block tables it is sent.

    96 tokens of cache (6 blocks of 16) for three requests that share a 40-token prompt prefix and need 69 tokens
    each: the later ones find the prefix's 2 full blocks cached, and the three cannot all fit, so some are
    preempted and recomputed. Static decode runs the same buckets on both ranks.
    """
    config = worker_config(
        "glm", tensor_parallel_size=2, collective_timeout=60, kv_cache_tokens=96, decode_mode="static",
        enable_prefix_caching=True, max_num_batched_tokens=32,
    )  # fmt: skip
    engine, info = _start(config)
    shared = random_prompt(40, seed=77, vocab_size=info.vocab_size)
    first = make_submit("first", (*shared, 5, 6, 7), 6)
    later = [
        make_submit(f"p{i}", (*shared, *random_prompt(5, seed=90 + i, vocab_size=info.vocab_size)), 24, sampling)
        for i, sampling in enumerate((None, SamplingParams(repetition_penalty=1.3), None))
    ]
    try:
        assert info.kv_cache_blocks == 6 and engine.runner.static_decoder is not None
        warm_up = engine.scheduler.stats.num_prompt_tokens
        deltas = run_to_end(engine, {0: [first], 12: later}, max_steps=1000)
        stats = engine.scheduler.stats
        assert stats.num_prompt_tokens - warm_up == 43 + 3 * 45
        assert stats.num_cached_tokens >= 32  # at least the shared prefix's 2 full blocks, once
        assert stats.num_preemptions > 0 and engine.scheduler.pool.num_used == 0
    finally:
        pids = _stop(engine)
    model = reference_model("glm")
    for request in (first, *later):
        penalty = request.sampling.repetition_penalty
        expected = reference(model, request.prompt_ids, 6 if request is first else 24, repetition_penalty=penalty)
        assert tokens_of(deltas[request.request_id]) == expected, request.request_id
    _assert_gone(pids)


def test_nf4_two_ranks_equal_one(tmp_path, worker_config) -> None:
    from workers.model.checkpoints import TinyModelSpec, build_checkpoint

    # Shards of 64 columns: nf4 quantizes blocks of 64 weights, so a rank's blocks are the whole model's.
    path = build_checkpoint(tmp_path, TinyModelSpec(hidden_size=128, intermediate_size=256, seed=5))
    config = worker_config("glm", model_path=str(path), quantization="nf4", collective_timeout=60)
    whole, info = _start(config)
    expected = run_to_end(whole, _arrivals(info.vocab_size))
    split, info = _start(config.__class__(**{**_fields(config), "tensor_parallel_size": 2}))
    try:
        got = run_to_end(split, _arrivals(info.vocab_size))
        sharded = [rank.sharded_weight_bytes for rank in info.ranks]
    finally:
        pids = _stop(split)
    assert {key: tokens_of(value) for key, value in got.items()} == {
        key: tokens_of(value) for key, value in expected.items()
    }
    assert sharded[0] == sharded[1] > 0
    _assert_gone(pids)


def _fields(config) -> dict:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def _assert_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _exists(pid):
            assert time.monotonic() < deadline, f"rank process {pid} is still running"
            time.sleep(0.05)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
