"""The harness end to end on the session's tiny GLM checkpoint: every CPU system, two levels, a few tokens.

Real components throughout: HF `generate()`, the engine in process, and the service (a server subprocess with a
worker process, driven by client subprocesses over gRPC and over HTTP). Only counts and report structure are
asserted, never speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from bench.cuda_graph import StaticGraphDecoder
from bench.harness import SYSTEMS, BenchOptions, run_bench
from bench.workload import Workload

NEW_TOKENS = 4


def test_cpu_run_measures_every_system_and_writes_the_report(glm_checkpoint: Path, tmp_path: Path) -> None:
    # hf_continuous_batching's set-up takes ~30 s on a CPU; hf_serve has its own test (test_hf_serve.py).
    cpu_systems = tuple(s for s in SYSTEMS if s not in ("hf_continuous_batching", "hf_serve"))
    options = BenchOptions(
        kind="cpu",
        out_dir=tmp_path / "run",
        prompt_len=8,
        new_tokens=NEW_TOKENS,
        concurrency=(1, 2),
        min_requests=2,
        systems=cpu_systems,
        max_num_batched_tokens=64,
        client_processes=2,
        model_path=glm_checkpoint,
        threads=1,
    )
    report = run_bench(options)
    assert json.loads((tmp_path / "run" / "bench.json").read_text()) == report
    markdown = (tmp_path / "run" / "bench.md").read_text()
    assert "## The service against the engine in process" in markdown
    assert "## Gateway CPU per output token" in markdown
    assert "## CPU per output token by process" in markdown

    measured = {(r["system"], r["concurrency"]): r for r in report["results"]}
    systems = ("hf_static_batch", "engine", "service", "service_http", "grpc_floor")
    expected = {("hf_generate", 1)} | {(s, c) for s in systems for c in (1, 2)}
    assert set(measured) == expected
    served = ("service", "service_http", "grpc_floor")
    for (system, _), result in measured.items():  # each process's own CPU counters, read around each level
        assert (result["gateway_cpu_us_per_token"] is not None) == (system in served)
        assert (result["client_cpu_us_per_token"] is not None) == (system in served)
        # Only the service has worker processes (the bare grpc server has none).
        assert (result["worker_cpu_us_per_token"] is not None) == system.startswith("service")
        if system in served:  # clock ticks of 10 ms: a level this small may read 0, never less
            assert result["gateway_cpu_us_per_token"] >= 0 and result["client_cpu_us_per_token"] >= 0
    for result in measured.values():
        assert result["num_requests"] == 2
        assert result["output_tokens"] == 2 * NEW_TOKENS  # every request produced exactly its tokens
        assert result["throughput_tok_s"] > 0 and result["ttft_s"]["p50"] > 0
        assert result["itl_s"]["p99"] >= result["itl_s"]["p50"] >= 0
    assert [s["system"] for s in report["skipped"]] == ["hf_cuda_graph", "hf_cuda_graph"]
    assert all("CUDA" in s["reason"] for s in report["skipped"])
    assert [row["concurrency"] for row in report["comparison"]] == [1, 2]
    assert report["comparison"][0]["service_vs_engine"] > 0
    assert report["machine"]["torch"] == torch.__version__
    assert report["workload"]["new_tokens"] == NEW_TOKENS
    assert report["service_settings"]["max_batch_size"] == 2
    assert report["service_settings"]["worker_threads"] == report["machine"]["torch_threads"] == 1


def test_static_cache_decoder_matches_generate(glm_checkpoint: Path) -> None:
    """The CUDA-graph baseline's decode loop, run eagerly: the same greedy tokens as `generate()`."""
    model = AutoModelForCausalLM.from_pretrained(glm_checkpoint, dtype=torch.float32).eval()
    workload = Workload(prompt_len=12, new_tokens=10, concurrency=(3,), token_low=4, token_high=600)
    prompts = workload.prompts(3)
    decoder = StaticGraphDecoder(model, batch_size=3, max_len=workload.max_seq_len, use_graph=False)
    for _ in range(2):  # the second wave reuses the cache
        tokens, timings = decoder.generate(prompts, workload.new_tokens)
        with torch.no_grad():
            expected = model.generate(
                torch.tensor(prompts),
                attention_mask=torch.ones(3, 12, dtype=torch.long),
                do_sample=False,
                max_new_tokens=10,
                min_new_tokens=10,
            )[:, 12:]
        assert tokens == expected.tolist()
        assert all(len(t.token_times) == 10 for t in timings)
