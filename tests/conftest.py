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
from workers.model.checkpoints import TinyModelSpec, build_checkpoint

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
