"""Factories for the worker tests: tiny checkpoints (built once per session), engines and requests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.workers.factories import FAMILIES, make_submit
from workers.protocol import Submit, WorkerConfig

# Randomly initialized q/k projections (std 0.02) give near-uniform attention, under which a position off by one
# changes no greedy token. Scaling them makes attention sharp and position-dependent, so a parity test with
# `generate` catches mistakes in positions, masks or the cache.
_QK_SCALE = 16.0


def _sharpen_attention(path: Path) -> None:
    """Scale the queries and keys: their projections, or the q/k norms of a model that normalizes them after
    the projection (Qwen3, Gemma 3); Phi-3's fused projection holds q and k in its first rows."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    config = json.loads((path / "config.json").read_text())
    num_qk_rows = (config["num_attention_heads"] + config["num_key_value_heads"]) * config["head_dim"]
    is_offset_norm = config["model_type"].startswith("gemma")  # Gemma's RMSNorm scales by (1 + weight)
    weights_file = path / "model.safetensors"
    weights = load_file(weights_file)
    has_qk_norm = any(".q_norm." in name for name in weights)
    for name, tensor in weights.items():
        if has_qk_norm and (".q_norm." in name or ".k_norm." in name):
            weights[name] = (tensor + 1) * _QK_SCALE - 1 if is_offset_norm else tensor * _QK_SCALE
        elif not has_qk_norm and (".q_proj." in name or ".k_proj." in name):
            weights[name] = tensor * _QK_SCALE
        elif ".qkv_proj." in name:
            weights[name] = torch.cat([tensor[:num_qk_rows] * _QK_SCALE, tensor[num_qk_rows:]])
    save_file(weights, weights_file, metadata={"format": "pt"})


def _override_config(path: Path, overrides: dict) -> None:
    import json

    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **overrides}, indent=2))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Callable[[str], Path]:
    """checkpoint(family) -> the path of a tiny checkpoint of that family (see `FAMILIES`), built on first use."""
    from workers.model.checkpoints import TinyModelSpec, build_checkpoint

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            spec = FAMILIES[family]
            path = tmp_path_factory.mktemp(f"ckpt-{family}")
            tiny = TinyModelSpec(spec.architecture, seed=spec.seed, sliding_window=spec.sliding_window)
            build_checkpoint(path, tiny)
            _override_config(path, spec.config)
            _sharpen_attention(path)
            built[family] = path
        return built[family]

    return get


@pytest.fixture(scope="session")
def reference_model(checkpoint) -> Callable[[str], object]:
    """reference_model(family) -> the same checkpoint as a plain transformers model (its default attention:
    SDPA, or eager where SDPA cannot compute it, as for Gemma 2)."""
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
    """worker_config(family, **overrides) -> a CPU WorkerConfig for that tiny checkpoint (see `FAMILIES`)."""

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
    from workers.engine.engine import Engine
    from workers.model.loader import load_model

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
