"""Planning tensor-parallel replicas: W workers split N ways are W / N replicas, each rank 0 seeing its N GPUs;
a split the checkpoint cannot take is refused before any process starts, naming --tensor-parallel-size."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from autoglm_rpc.startup.config import Settings
from autoglm_rpc.startup.devices import plan_workers

CONFIG = {"num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 512}


def _served(tmp_path: Path, **config) -> SimpleNamespace:
    (tmp_path / "config.json").write_text(json.dumps({**CONFIG, **config}))
    return SimpleNamespace(source=str(tmp_path), model_id="glm", max_context_tokens=4096)


def test_replicas_of_n_gpus_each(tmp_path: Path) -> None:
    settings = Settings(device="cuda", workers=4, tensor_parallel_size=2, collective_timeout=5.0)
    configs = plan_workers(settings, _served(tmp_path), gpus=["0", "1", "2", "3"])  # type: ignore[arg-type]
    assert [(c.worker_id, c.cuda_visible_devices, c.tensor_parallel_size) for c in configs] == [
        (0, "0,1", 2),
        (1, "2,3", 2),
    ]
    assert {c.collective_timeout for c in configs} == {5.0}


def test_cpu_default_is_one_replica_with_the_cores_shared(tmp_path: Path) -> None:
    (config,) = plan_workers(Settings(device="cpu", tensor_parallel_size=2), _served(tmp_path))  # type: ignore[arg-type]
    assert (config.tensor_parallel_size, config.device) == (2, "cpu")
    assert config.num_threads is not None and config.num_threads >= 1
    (pinned,) = plan_workers(Settings(device="cpu", tensor_parallel_size=2, worker_threads=3), _served(tmp_path))  # type: ignore[arg-type]
    assert pinned.num_threads == 3


def test_the_split_from_flag_environment_and_file(tmp_path: Path) -> None:
    file = tmp_path / "autoglm.toml"
    file.write_text("tensor_parallel_size = 4\nworkers = 8\ncollective_timeout = 30.0\n")
    from_file = Settings.from_sources({}, environ={}, config_file=file)
    assert (from_file.tensor_parallel_size, from_file.workers, from_file.collective_timeout) == (4, 8, 30.0)
    environ = {"AUTOGLM_TENSOR_PARALLEL_SIZE": "2", "AUTOGLM_COLLECTIVE_TIMEOUT": "5"}
    from_environment = Settings.from_sources({}, environ=environ, config_file=file)
    assert (from_environment.tensor_parallel_size, from_environment.collective_timeout) == (2, 5.0)
    flagged = Settings.from_sources({"tensor_parallel_size": 1}, environ=environ, config_file=file)
    assert flagged.tensor_parallel_size == 1


def test_workers_must_be_a_multiple_of_the_split() -> None:
    with pytest.raises(ValueError, match=r"workers \(3\) must be a multiple of tensor_parallel_size \(2\)"):
        Settings(workers=3, tensor_parallel_size=2).validate()
    with pytest.raises(ValueError, match="tensor_parallel_size must be at least 1"):
        Settings(tensor_parallel_size=0).validate()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num_key_value_heads": 3}, "num_key_value_heads is 3, which does not divide by 2"),
        ({"num_attention_heads": 9}, "num_attention_heads is 9"),
        ({"intermediate_size": 511}, "intermediate_size is 511"),
        ({"quantization_config": {"quant_method": "awq"}}, "pre-quantized \\(awq\\)"),
    ],
)
def test_a_split_the_model_cannot_take_is_refused(tmp_path: Path, config: dict, message: str) -> None:
    settings = Settings(device="cpu", workers=2, tensor_parallel_size=2)
    with pytest.raises(ValueError, match=f"--tensor-parallel-size 2: .*{message}"):
        plan_workers(settings, _served(tmp_path, **config))  # type: ignore[arg-type]
