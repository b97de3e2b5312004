"""A worker that fails to load, before any worker was ready, with an error a restart would repeat ends the server
at once: exit status 1, the error's message, one worker start and no restart loop."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from workers.process.worker import load_failure_repeats

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "autoglm_rpc.startup.cli"]


def _truncate_weights(checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _remove_weights(checkpoint: Path) -> None:
    (checkpoint / "model.safetensors").unlink()


def _mismatch_shapes(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    config["intermediate_size"] = config["intermediate_size"] * 2
    (checkpoint / "config.json").write_text(json.dumps(config))


def _intact(checkpoint: Path) -> None:
    """The checkpoint is fine; the setting is what cannot work."""


def _impossible_context(checkpoint: Path) -> None:
    """A context length not one token fits in. (A context longer than the paged KV cache holds is no longer a
    failure: the worker lowers its context limit to the cache's size, see `workers.model.loader.fit_context`.)"""
    config = json.loads((checkpoint / "config.json").read_text())
    config["max_position_embeddings"] = -1
    (checkpoint / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("breakage", "setting"),
    [
        (_truncate_weights, []),
        (_remove_weights, []),
        (_mismatch_shapes, []),
        (_impossible_context, []),
        # A KV cache far larger than the machine's memory: the worker refuses it before allocating anything.
        (_intact, ["--kv-cache-tokens", str(10**13)]),
    ],
)
def test_a_load_that_would_fail_again_ends_the_server_at_once(
    breakage: Callable[[Path], None], setting: list[str], glm_checkpoint: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(glm_checkpoint, broken)
    breakage(broken)
    flags = ["--model", str(broken), "--port", "0", "--device", "cpu", "--workers", "1", "--worker-threads", "1"]
    flags += setting
    result = subprocess.run(
        [*CLI, "serve", *flags, "--log-format", "text", "--http-port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "worker 0 cannot load the model" in result.stderr.splitlines()[-1], result.stderr
    assert result.stderr.count("worker 0 started") == 1 and "restarting in" not in result.stderr, result.stderr


def test_running_out_of_memory_or_a_device_error_may_not_repeat() -> None:
    import torch

    assert not load_failure_repeats(MemoryError("injected"))
    assert not load_failure_repeats(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not load_failure_repeats(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert load_failure_repeats(RuntimeError("Error(s) in loading state_dict: size mismatch for lm_head.weight"))
    assert load_failure_repeats(ValueError("max_seq_len 9000 exceeds the checkpoint's context length 512"))
    assert load_failure_repeats(FileNotFoundError("model.safetensors"))
