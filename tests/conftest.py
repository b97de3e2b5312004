"""Shared fixtures: tiny checkpoints built once per session, and real servers over them.

Every server binds 127.0.0.1 on port 0 and runs real CPU worker processes; each is stopped at the end of the
session, and the last fixture checks that no worker process is left behind.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerThread, server_settings
from workers.model.checkpoints import TinyModelSpec, build_checkpoint, build_glm4v_checkpoint

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests where no CUDA device is present."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def glm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GLM, 2 layers, with a chat template."""
    return build_checkpoint(tmp_path_factory.mktemp("glm"), TinyModelSpec(architecture="glm", seed=1))


@pytest.fixture(scope="session")
def llama_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama, 2 layers, without a chat template."""
    spec = TinyModelSpec(architecture="llama", seed=2, has_chat_template=False)
    return build_checkpoint(tmp_path_factory.mktemp("llama"), spec)


@pytest.fixture(scope="session")
def glm4v_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GLM-4.1V (AutoGLM-Phone-9B's architecture): 2 text layers, a 2-layer vision tower, a PIL image processor
    config giving 4 to 64 image tokens per image. The text model's queries and keys are scaled (as the worker
    tests' checkpoints are) so that attention depends sharply on M-RoPE positions, and the vision tower's output
    is scaled to the text embeddings' size so that the image changes the tokens."""
    path = build_glm4v_checkpoint(tmp_path_factory.mktemp("glm4v"))
    _scale_weights(path, {".q_proj.": 16.0, ".k_proj.": 16.0, "visual.merger.down_proj.": 20.0})
    return path


def _scale_weights(path: Path, factors: dict[str, float]) -> None:
    """Multiply every weight whose name contains a key of `factors` by its factor, in place."""
    from safetensors.torch import load_file, save_file

    weights = load_file(path / "model.safetensors")
    for name, tensor in weights.items():
        factor = next((f for part, f in factors.items() if part in name), None)
        if factor is not None:
            weights[name] = tensor * factor
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="session")
def glm_server(glm_checkpoint: Path) -> Iterator[ServerThread]:
    server = ServerThread(server_settings(glm_checkpoint, model_id="tiny-glm")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llama_server(llama_checkpoint: Path) -> Iterator[ServerThread]:
    server = ServerThread(server_settings(llama_checkpoint, model_id="tiny-llama")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    yield
    leftovers = multiprocessing.active_children()
    for process in leftovers:
        process.kill()
    assert not leftovers, f"worker processes left running: {leftovers}"
