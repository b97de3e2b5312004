"""Factories for the worker tests: tiny checkpoints (built once per session), engines and requests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.workers.factories import make_submit
from workers.protocol import Submit, WorkerConfig

_SEEDS = {"glm": 11, "llama": 12, "qwen2": 13}
# Randomly initialized q/k projections (std 0.02) give near-uniform attention, under which a position off by one
# changes no greedy token. Scaling them makes attention sharp and position-dependent, so a parity test with
# `generate` catches mistakes in positions, masks or the cache.
_QK_SCALE = 16.0


def _sharpen_attention(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights_file = path / "model.safetensors"
    weights = load_file(weights_file)
    for name, tensor in weights.items():
        if ".q_proj." in name or ".k_proj." in name:
            weights[name] = tensor * _QK_SCALE
    save_file(weights, weights_file, metadata={"format": "pt"})


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Callable[[str], Path]:
    """checkpoint(architecture) -> the path of a tiny checkpoint of that architecture, built on first use."""
    from workers.checkpoints import TinyModelSpec, build_checkpoint

    built: dict[str, Path] = {}

    def get(architecture: str) -> Path:
        if architecture not in built:
            path = tmp_path_factory.mktemp(f"ckpt-{architecture}")
            build_checkpoint(path, TinyModelSpec(architecture=architecture, seed=_SEEDS[architecture]))
            _sharpen_attention(path)
            built[architecture] = path
        return built[architecture]

    return get


@pytest.fixture(scope="session")
def reference_model(checkpoint) -> Callable[[str], object]:
    """reference_model(architecture) -> the same checkpoint as a plain transformers model (SDPA attention)."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded: dict[str, object] = {}

    def get(architecture: str):
        if architecture not in loaded:
            model = AutoModelForCausalLM.from_pretrained(checkpoint(architecture), dtype=torch.float32)
            loaded[architecture] = model.eval()
        return loaded[architecture]

    return get


@pytest.fixture
def worker_config(checkpoint) -> Callable[..., WorkerConfig]:
    """worker_config(architecture, **overrides) -> a CPU WorkerConfig for that tiny checkpoint."""

    def make(architecture: str = "glm", **overrides) -> WorkerConfig:
        fields = {
            "worker_id": 0,
            "model_path": str(checkpoint(architecture)),
            "model_id": f"tiny-{architecture}",
            "max_batch_size": 4,
            "max_num_batched_tokens": 16,
            "num_threads": 1,
        }
        fields.update(overrides)
        return WorkerConfig(**fields)

    return make


@pytest.fixture
def make_engine(worker_config) -> Callable[..., object]:
    """make_engine(architecture, **config overrides) -> a warmed-up Engine on the CPU."""
    from workers.engine import Engine
    from workers.loader import load_model

    def make(architecture: str = "glm", **overrides):
        config = worker_config(architecture, **overrides)
        engine = Engine.from_loaded(load_model(config, lambda stage, fraction: None), config)
        engine.warm_up()
        return engine

    return make


@pytest.fixture
def submit() -> Callable[..., Submit]:
    """submit(request_id, prompt_ids, max_new_tokens=8, sampling=None, **stopping) -> Submit."""
    return make_submit
