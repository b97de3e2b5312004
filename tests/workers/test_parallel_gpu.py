"""Tensor parallelism on GPUs: NCCL all-reduces inside captured CUDA graphs (needs two CUDA devices).

Each rank captures its decode graphs with the row-parallel all-reduces inside them (rank 0 tells the other
rank to capture the same buckets in the same order), and the replayed steps give transformers' greedy tokens.
"""

from __future__ import annotations

import pytest

from tests.workers.factories import make_submit, random_prompt, reference, run_to_end, tokens_of

pytestmark = pytest.mark.gpu


def test_nccl_all_reduce_inside_cuda_graphs_gives_generate_tokens(worker_config, reference_model) -> None:
    import torch

    from workers.process.load import start_engine

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices (one per rank)")
    config = worker_config(
        "glm", device="cuda", dtype="float32", decode_mode="cuda_graphs", tensor_parallel_size=2
    )
    engine, info = start_engine(config, lambda stage, fraction: None)
    try:
        assert [rank.device for rank in info.ranks] == ["cuda:0", "cuda:1"]
        assert engine.runner.static_decoder.num_graphs > 0  # captured, all-reduce included
        prompts = {f"r{i}": random_prompt(6 + 5 * i, i, info.vocab_size) for i in range(3)}
        deltas = run_to_end(engine, {0: [make_submit(key, prompt, 12) for key, prompt in prompts.items()]})
    finally:
        engine.runner.mirror.stop()
    model = reference_model("glm")
    for key, prompt in prompts.items():
        assert tokens_of(deltas[key]) == reference(model, prompt, 12), key
