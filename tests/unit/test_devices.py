"""Worker planning: one worker per visible GPU, pinned; CPU workers otherwise; no torch needed to decide."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from autoglm_rpc.startup.config import Settings
from autoglm_rpc.startup.devices import plan_workers, visible_gpus

SERVED = SimpleNamespace(source="/models/glm", model_id="glm", max_context_tokens=4096)


def test_visible_gpus_from_environment_and_driver(tmp_path: Path) -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    for index in range(3):
        (tmp_path / f"0000:0{index}:00.0").mkdir()
    assert visible_gpus({}, driver_dir=tmp_path) == ["0", "1", "2"]
    assert visible_gpus({}, driver_dir=tmp_path / "missing") == []


def test_one_pinned_worker_per_gpu() -> None:
    configs = plan_workers(Settings(device="auto"), SERVED, gpus=["0", "1"])  # type: ignore[arg-type]
    assert [(c.device, c.cuda_visible_devices, c.worker_id) for c in configs] == [
        ("cuda", "0", 0),
        ("cuda", "1", 1),
    ]
    assert all(c.max_seq_len == 4096 and c.model_path == "/models/glm" for c in configs)
    tuned = Settings(
        device="auto", decode_mode="static", kv_cache_memory_fraction=0.5, kv_cache_tokens=4096, kv_block_size=32,
        enable_prefix_caching=False,
    )  # fmt: skip
    (config,) = plan_workers(tuned, SERVED, gpus=["0"])  # type: ignore[arg-type]
    assert (config.decode_mode, config.kv_cache_memory_fraction) == ("static", 0.5)
    assert (config.kv_cache_tokens, config.kv_block_size, config.enable_prefix_caching) == (4096, 32, False)


def test_cpu_workers_and_errors() -> None:
    configs = plan_workers(Settings(device="auto", workers=3), SERVED, gpus=[])  # type: ignore[arg-type]
    assert [(c.device, c.cuda_visible_devices) for c in configs] == [("cpu", None)] * 3
    with pytest.raises(ValueError, match="no NVIDIA GPU"):
        plan_workers(Settings(device="cuda"), SERVED, gpus=[])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only 1 GPU"):
        plan_workers(Settings(device="cuda", workers=2), SERVED, gpus=["0"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cuda_graphs needs device cuda"):
        plan_workers(Settings(decode_mode="cuda_graphs"), SERVED, gpus=[])  # type: ignore[arg-type]
