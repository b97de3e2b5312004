"""GPU-only paths of the harness (marker `gpu`): the CUDA-graph baseline and nf4, on the tiny GLM checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from bench.cuda_graph import StaticGraphDecoder
from bench.harness import BenchOptions, run_bench
from bench.workload import Workload

pytestmark = pytest.mark.gpu


def test_cuda_graph_decoder_matches_eager(glm_checkpoint: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(glm_checkpoint, dtype=torch.float32).to("cuda").eval()
    workload = Workload(prompt_len=12, new_tokens=10, concurrency=(4,), token_low=4, token_high=600)
    prompts = workload.prompts(4)
    eager = StaticGraphDecoder(model, 4, workload.max_seq_len, use_graph=False).generate(prompts, 10)[0]
    graphed = StaticGraphDecoder(model, 4, workload.max_seq_len, use_graph=True)
    assert graphed.generate(prompts, 10)[0] == eager
    assert graphed.graph is not None
    assert graphed.generate(prompts, 10)[0] == eager  # replayed on a reset cache


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_gpu_run_has_no_failures(glm_checkpoint: Path, tmp_path: Path, quantization: str) -> None:
    options = BenchOptions(
        kind="gpu",
        out_dir=tmp_path / quantization,
        prompt_len=8,
        new_tokens=4,
        concurrency=(1, 2),
        min_requests=2,
        quantization=quantization,
        model_path=glm_checkpoint,
    )
    report = run_bench(options)
    assert report["skipped"] == []
    systems = {r["system"] for r in report["results"]}
    assert {"hf_generate", "hf_static_batch", "hf_cuda_graph", "engine", "service"} <= systems
    assert all(r["output_tokens"] == r["num_requests"] * 4 for r in report["results"])
    assert report["targets"]  # evaluated (not met, on a tiny model)
