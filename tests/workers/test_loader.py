"""Loading: option resolution with clear errors, ModelInfo, quantized loads, and the CUDA path where present."""

from __future__ import annotations

import importlib.util
import logging
import os
from types import SimpleNamespace

import pytest
import torch

from tests.workers.factories import make_submit, random_prompt, reference, run_to_end, tokens_of
from workers.engine import Engine
from workers.kv_cache import CacheSpec, slots_that_fit
from workers.loader import (
    load_model,
    quantization_config,
    resolve_device,
    resolve_dtype,
    resolve_max_seq_len,
)
from workers.protocol import FinishReason

HAS_CUDA = torch.cuda.is_available()
HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; none is present")


def no_progress(stage: str, fraction: float) -> None:
    pass


def test_dtype_resolution() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) is torch.float32
    assert resolve_dtype("auto", cuda) is torch.bfloat16
    assert resolve_dtype("float16", cpu) is torch.float16
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype("fp8", cpu)


def test_device_resolution() -> None:
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            resolve_device("gpu")


def test_quantization_options() -> None:
    assert quantization_config("none", torch.float32) is None
    with pytest.raises(ValueError, match="quantization must be one of"):
        quantization_config("int4", torch.float32)
    if not HAS_ACCELERATE:
        with pytest.raises(ValueError, match=r"--quantization nf4 needs the 'accelerate' package"):
            quantization_config("nf4", torch.float32)


def test_context_limit_resolution() -> None:
    config = SimpleNamespace(max_position_embeddings=512)
    assert resolve_max_seq_len(None, config) == 512
    assert resolve_max_seq_len(100, config) == 100
    with pytest.raises(ValueError, match="exceeds the checkpoint's context length 512"):
        resolve_max_seq_len(1024, config)


def test_model_info_and_progress(worker_config) -> None:
    stages = []
    loaded = load_model(worker_config("qwen2", max_seq_len=128), lambda s, f: stages.append((s, f)))
    info = loaded.info
    assert (info.architecture, info.dtype, info.quantization, info.device) == (
        "Qwen2ForCausalLM",
        "float32",
        "none",
        "cpu",
    )
    assert (info.max_context_tokens, info.max_batch_size, info.vocab_size) == (128, 4, 640)
    assert loaded.cache.keys[0].shape == (4, 128 + 1, 2, 16)  # positions, then the scratch position
    assert [s for s, _ in stages][:2] == ["loading weights", "allocating KV cache"]


def test_slots_that_fit_is_bounded_by_memory_and_by_the_batch() -> None:
    assert slots_that_fit(bytes_per_slot=100, free_bytes=10_000, memory_fraction=0.5, max_slots=32) == 32
    assert slots_that_fit(bytes_per_slot=1_000, free_bytes=10_000, memory_fraction=0.5, max_slots=32) == 5
    assert slots_that_fit(bytes_per_slot=6_000, free_bytes=10_000, memory_fraction=0.5, max_slots=32) == 0


def test_cache_spec_counts_the_scratch_position() -> None:
    spec = CacheSpec(
        num_layers=2, num_slots=3, max_seq_len=7, num_kv_heads=2, head_dim=4, dtype=torch.float32,
        device=torch.device("cpu"),
    )  # fmt: skip
    assert spec.scratch_position == 7
    assert spec.bytes_per_slot == 2 * 2 * (7 + 1) * 2 * 4 * 4  # K and V, layers, positions + scratch, heads, dim
    assert spec.num_bytes == 3 * spec.bytes_per_slot


def _free_host_bytes() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _bytes_per_slot(config) -> int:
    probe = load_model(config, lambda stage, fraction: None)
    return probe.cache.spec.bytes_per_slot


def test_a_cache_smaller_than_the_batch_shrinks_the_batch(worker_config, caplog) -> None:
    per_slot = _bytes_per_slot(worker_config("glm", max_batch_size=1))
    # Room for two and a half requests: the worker runs two at a time and says so.
    config = worker_config("glm", max_batch_size=8, kv_cache_memory_fraction=2.5 * per_slot / _free_host_bytes())
    with caplog.at_level(logging.WARNING, logger="workers.loader"):
        loaded = load_model(config, lambda stage, fraction: None)
    assert loaded.cache.spec.num_slots == 2
    assert loaded.info.max_batch_size == 2
    assert "holds 2 requests" in caplog.text and "not max_batch_size 8" in caplog.text
    assert Engine.from_loaded(loaded, config).scheduler.max_batch_size == 2


def test_a_cache_without_room_for_one_request_refuses_to_load(worker_config) -> None:
    config = worker_config("glm", kv_cache_memory_fraction=1e-12)
    with pytest.raises(ValueError, match=r"per request of max_seq_len .* lower max_seq_len"):
        load_model(config, lambda stage, fraction: None)


def greedy_parity(engine, model, num_requests: int = 3, max_new_tokens: int = 8) -> None:
    """The engine's greedy tokens equal `model.generate`'s for a few concurrent requests."""
    prompts = [random_prompt(5 + 9 * i, seed=i) for i in range(num_requests)]
    requests = [make_submit(f"r{i}", prompt, max_new_tokens) for i, prompt in enumerate(prompts)]
    deltas = run_to_end(engine, {0: requests})
    for i, prompt in enumerate(prompts):
        assert tokens_of(deltas[f"r{i}"]) == reference(model, prompt, max_new_tokens), f"r{i}"
        assert deltas[f"r{i}"][-1].finish.reason is FinishReason.MAX_NEW_TOKENS


def _engine_and_reference(worker_config, **overrides):
    """An engine and a plain transformers model (default attention) loaded with the same options."""
    from transformers import AutoModelForCausalLM

    config = worker_config("llama", **overrides)
    loaded = load_model(config, no_progress)
    engine = Engine.from_loaded(loaded, config)
    engine.warm_up()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    options = {"dtype": dtype, "quantization_config": quantization_config(config.quantization, dtype)}
    if options["quantization_config"] is not None:
        options["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(config.model_path, **options)
    return engine, model.to(device) if options["quantization_config"] is None else model


@pytest.mark.skipif(not HAS_ACCELERATE, reason="bitsandbytes through transformers needs accelerate")
@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_quantized_on_cpu_matches_generate(quantization, worker_config) -> None:
    engine, model = _engine_and_reference(worker_config, quantization=quantization)
    assert engine.runner.model.config.quantization_config is not None
    greedy_parity(engine, model)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_greedy(dtype, worker_config) -> None:
    engine, model = _engine_and_reference(worker_config, device="cuda", dtype=dtype)
    if dtype == "float32":
        greedy_parity(engine, model)
        return
    # bf16 rounding differs between attention kernels, so only the run itself is checked in bf16.
    deltas = run_to_end(engine, {0: [make_submit(f"r{i}", random_prompt(5 + 9 * i, seed=i), 8) for i in range(3)]})
    assert all(len(tokens_of(deltas[f"r{i}"])) == 8 for i in range(3))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(not HAS_ACCELERATE, reason="bitsandbytes through transformers needs accelerate")
def test_cuda_nf4_greedy(worker_config) -> None:
    engine, _ = _engine_and_reference(worker_config, device="cuda", quantization="nf4")
    assert engine.runner.cache.spec.dtype is torch.bfloat16
    deltas = run_to_end(engine, {0: [make_submit(f"r{i}", random_prompt(5 + 9 * i, seed=i), 8) for i in range(3)]})
    assert all(len(tokens_of(deltas[f"r{i}"])) == 8 for i in range(3))
