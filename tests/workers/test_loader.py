"""Loading: option resolution with clear errors, ModelInfo, quantized loads, and the CUDA path where present."""

from __future__ import annotations

import importlib.util
import logging
from types import SimpleNamespace

import pytest
import torch

from tests.workers.factories import make_submit, random_prompt, reference, run_to_end, tokens_of
from workers.engine.engine import Engine
from workers.kv.cache import CacheSpec, blocks_that_fit
from workers.model.loader import (
    load_model,
    quantization_config,
    resolve_device,
    resolve_dtype,
    resolve_max_seq_len,
)
from workers.protocol import FailureReason, FinishReason

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
    config = worker_config("qwen2", max_seq_len=128, kv_cache_tokens=600)
    loaded = load_model(config, lambda s, f: stages.append((s, f)))
    info = loaded.info
    assert (info.architecture, info.dtype, info.quantization, info.device) == (
        "Qwen2ForCausalLM",
        "float32",
        "none",
        "cpu",
    )
    assert (info.max_context_tokens, info.max_batch_size, info.vocab_size) == (128, 4, 640)
    assert (info.kv_cache_blocks, info.kv_block_size, info.prefix_caching) == (38, 16, True)  # 600 / 16 rounded up
    assert loaded.cache.keys[0].shape == (38 + 1, 16, 2, 16)  # the scratch block, then the requests' blocks
    assert [s for s, _ in stages][:2] == ["loading weights", "allocating KV cache"]


def test_blocks_that_fit_come_from_memory_or_from_the_token_budget() -> None:
    assert blocks_that_fit(bytes_per_block=100, block_size=16, free_bytes=10_000, memory_fraction=0.5,
                           kv_cache_tokens=None) == 50  # fmt: skip
    assert blocks_that_fit(bytes_per_block=100, block_size=16, free_bytes=10_000, memory_fraction=0.5,
                           kv_cache_tokens=33) == 1 + 3  # fmt: skip  # scratch + ceil(33 / 16)


def test_cache_spec_counts_blocks_and_the_scratch_block() -> None:
    spec = CacheSpec(
        num_layers=2, num_blocks=5, block_size=16, num_kv_heads=2, head_dim=4, dtype=torch.float32,
        device=torch.device("cpu"),
    )  # fmt: skip
    assert spec.bytes_per_block == 2 * 2 * 16 * 2 * 4 * 4  # K and V, layers, positions, heads, dim, float32
    assert spec.num_bytes == 5 * spec.bytes_per_block
    assert spec.num_tokens == 4 * 16  # block 0 is scratch


def test_a_cache_smaller_than_the_context_caps_the_context(worker_config, caplog) -> None:
    config = worker_config("glm", max_seq_len=128, kv_cache_tokens=40)
    with caplog.at_level(logging.WARNING, logger="workers.model.loader"):
        loaded = load_model(config, lambda stage, fraction: None)
    assert loaded.cache.spec.num_blocks == 1 + 3 and loaded.info.max_context_tokens == 48
    assert "holds 48 tokens, fewer than max_seq_len 128" in caplog.text
    engine = Engine.from_loaded(loaded, config)
    assert (engine.scheduler.max_seq_len, engine.scheduler.max_batch_size) == (48, 4)
    engine.add(make_submit("long", random_prompt(60, seed=1)))  # within the checkpoint's context, not the cache
    (failure,) = engine.pop_failures()
    assert failure.reason is FailureReason.PROMPT_TOO_LONG and "KV cache's 48 tokens" in failure.message


def test_on_the_cpu_the_fraction_gives_at_most_a_full_batch_of_full_contexts(worker_config) -> None:
    loaded = load_model(worker_config("glm", max_seq_len=128, max_batch_size=4), lambda stage, fraction: None)
    assert loaded.cache.spec.num_blocks == 1 + 4 * 128 // 16


def test_a_cache_without_room_for_one_block_refuses_to_load(worker_config) -> None:
    config = worker_config("glm", kv_cache_memory_fraction=1e-12)
    with pytest.raises(ValueError, match=r"per block of 16 tokens.* raise kv_cache_memory_fraction"):
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
