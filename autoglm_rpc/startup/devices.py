"""Which devices the workers run on, decided without importing torch (the gateway stays light).

GPUs are counted from the NVIDIA driver's /proc entries, narrowed by CUDA_VISIBLE_DEVICES when it is set. With
device "cuda" (or "auto" on a machine with GPUs) there is one worker per GPU, each pinned to its GPU through
CUDA_VISIBLE_DEVICES; otherwise `workers` CPU workers (default 1).

With tensor parallelism (`tensor_parallel_size` N) a replica of the model is N worker processes, and the pool
gets one WorkerConfig per replica: its rank 0, which starts the other N - 1 ranks itself. A replica on GPUs
sees N GPUs (CUDA_VISIBLE_DEVICES lists them; rank k uses the k-th). A split the checkpoint cannot take is
refused here, before any process starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.parallel.split import check_split
from workers.protocol import TelemetryConfig, WorkerConfig

if TYPE_CHECKING:
    from autoglm_rpc.core.frontend import ServedModel
    from autoglm_rpc.startup.config import Settings

_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def visible_gpus(environ: Mapping[str, str] | None = None, driver_dir: Path = _NVIDIA_GPUS) -> list[str]:
    """The GPU ids a worker may be pinned to, as CUDA_VISIBLE_DEVICES values."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [item.strip() for item in listed.split(",") if item.strip() and item.strip() != "-1"]
    try:
        count = sum(1 for _ in driver_dir.iterdir())
    except OSError:
        return []
    return [str(index) for index in range(count)]


# EngineSettings fields the gateway resolves itself (worker count, thread share) instead of passing them on.
GATEWAY_ONLY_ENGINE_SETTINGS = frozenset({"workers", "worker_threads"})


def plan_workers(
    settings: Settings,
    served: ServedModel,
    gpus: list[str] | None = None,
    telemetry: TelemetryConfig | None = None,
) -> list[WorkerConfig]:
    """One WorkerConfig per worker process; raises ValueError when device cuda is asked for with no GPU.

    Every field of the `engine` and `checkpoint` sections that `WorkerConfig` also has goes to the workers under
    its own name (`worker_settings`); what the gateway resolves (device, context, threads, GPUs) is set here.
    """
    engine = settings.engine
    gpus = visible_gpus() if gpus is None else gpus
    device = engine.device
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    if device == "cuda" and not gpus:
        raise ValueError("device: cuda was asked for, but no NVIDIA GPU is visible (check the driver)")
    if engine.decode_mode == "cuda_graphs" and device != "cuda":
        raise ValueError("decode_mode: cuda_graphs needs device cuda")
    size = engine.tensor_parallel_size
    if size > 1:
        check_split(_model_config(served.source), size)
    if device == "cuda":
        count = engine.workers or len(gpus) // size * size
        if count > len(gpus) or count == 0:
            raise ValueError(f"workers: {count or size} asked for, but only {len(gpus)} GPU(s) are visible")
    else:
        count = engine.workers or size
    num_threads = engine.worker_threads
    if device == "cpu" and size > 1 and num_threads is None:
        # Ranks wait on each other at every layer: one oversubscribed core stalls the whole replica (measured
        # on 2 cores: 2 threads per rank made a step ten times slower than 1), so the cores are shared out.
        num_threads = max(1, (os.cpu_count() or 1) // count)
    shared = worker_settings(settings)
    return [
        WorkerConfig(
            **shared,
            worker_id=index,
            model_path=served.source,
            model_id=served.model_id,
            device=device,
            max_seq_len=served.max_context_tokens,
            num_threads=num_threads,
            cuda_visible_devices=",".join(gpus[index * size : (index + 1) * size]) if device == "cuda" else None,
            log_level=settings.telemetry.log_level,
            telemetry=telemetry or TelemetryConfig(),
        )
        for index in range(count // size)
    ]


def worker_settings(settings: Settings) -> dict[str, Any]:
    """The `engine` and `checkpoint` settings a `WorkerConfig` takes as they are, by name, minus those the
    gateway resolves for each worker (see `plan_workers`)."""
    resolved = {"device", "model_id", "max_seq_len"}
    names = {f.name for f in fields(WorkerConfig)} - resolved
    sections = (settings.engine, settings.checkpoint)
    return {f.name: getattr(s, f.name) for s in sections for f in fields(s) if f.name in names}


def _model_config(directory: str) -> dict:
    """The checkpoint's config.json (read_checkpoint_facts has already checked that it is a JSON object)."""
    return json.loads((Path(directory) / "config.json").read_text())
