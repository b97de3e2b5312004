"""The engine over a tensor-parallel replica: this process is rank 0 and starts rank 1 (gloo on 127.0.0.1).

Greedy tokens equal transformers' `generate()` under chunked prefill and continuous batching; sampled tokens
with a seed, and nf4 tokens, equal those of the same engine over the whole model (tp=1).
"""

from __future__ import annotations

import os
import time

import pytest

from tests.workers.factories import make_submit, random_prompt, reference, run_to_end, tokens_of
from workers.protocol import SamplingParams


def _start(config):
    from workers.engine import Engine

    engine, info = Engine.start(config, lambda stage, fraction: None)
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


def test_nf4_two_ranks_equal_one(tmp_path, worker_config) -> None:
    from workers.checkpoints import TinyModelSpec, build_checkpoint

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
