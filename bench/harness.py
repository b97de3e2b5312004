"""One benchmark run, from options to files: build the checkpoint, run every chosen system on the same workload
at every level, write the report (and the plot when matplotlib is there).

Order matters for memory on one GPU: the HF baselines share one in-memory model, which is freed before the
engine loads its own copy through `workers.model.loader`; the engine is freed before the service's worker loads. A
system that fails at a level (a baseline transformers cannot run here, out of memory, ...) is recorded under
`skipped` with the error, and the run goes on. `transformers serve` (`hf_serve`) runs last, once the service's
worker is gone.

Peer baselines (`PEER_SYSTEMS`: transformers' own ways to serve) are other projects' code: when one cannot run
here (its optional package missing, its server's output no longer the shape the client counts), it is recorded
as `peer unavailable: <why>` and the run still succeeds. A failure of one of the project's own systems is
`failed: <why>`, which makes `python -m bench` exit 1. Either way, a system that is measured is counted strictly
(every token, checked against the server's usage).
"""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import checkpoints, cuda_graph, engine_runner, hf_baselines, hf_serve, service
from bench.machine import describe_machine
from bench.plot import write_plot
from bench.report import build_report, write_report
from bench.stats import LevelResult
from bench.workload import Workload
from workers.protocol import WorkerConfig

logger = logging.getLogger(__name__)

SYSTEMS = (
    "hf_generate", "hf_static_batch", "hf_continuous_batching", "hf_cuda_graph", "engine",
    "service", "service_http", "grpc_floor", "hf_serve",
)  # fmt: skip
HF_SYSTEMS = SYSTEMS[:4]
PEER_SYSTEMS = frozenset({*HF_SYSTEMS, "hf_serve"})
FAILED, PEER_UNAVAILABLE = "failed: ", "peer unavailable: "
FLOOR_DEFAULT_STEP_S = 0.01


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """One run. `kind` is cpu (the demo checkpoint) or gpu (GLM-4-9B shape); `quantization` none or nf4."""

    kind: str
    out_dir: Path
    prompt_len: int
    new_tokens: int
    concurrency: tuple[int, ...]
    min_requests: int = 4
    systems: tuple[str, ...] = SYSTEMS
    quantization: str = "none"
    max_num_batched_tokens: int = 512
    client_processes: int = 1
    seed: int = 0
    checkpoint_dir: Path | None = None  # keep the built checkpoint here (default: a temporary directory)
    model_path: Path | None = None  # serve this existing checkpoint instead of building one
    threads: int | None = None  # torch threads of this process and of the service's worker (None: torch's)

    def __post_init__(self) -> None:
        unknown = set(self.systems) - set(SYSTEMS)
        if unknown:
            raise ValueError(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
        if self.kind not in ("cpu", "gpu"):
            raise ValueError(f"kind must be cpu or gpu, got {self.kind!r}")
        if self.quantization not in ("none", "nf4"):
            raise ValueError(f"quantization must be none or nf4, got {self.quantization!r}")

    @property
    def device(self) -> str:
        return "cuda" if self.kind == "gpu" else "cpu"

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.kind == "gpu" else "float32"


@dataclass
class _Run:
    options: BenchOptions
    workload: Workload | None = None
    results: list[LevelResult] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def measure(self, system: str, level: int | None, run: Callable[[], LevelResult]) -> None:
        """Run one system at one level; a failure is recorded (and logged) instead of ending the run."""
        started = time.perf_counter()
        try:
            result = run()
        except Exception as exc:
            logger.exception("%s at concurrency %s failed", system, level)
            self.fail(system, level, exc)
            _free_device_memory()
            return
        self.results.append(result)
        logger.info(
            "%-22s C=%-4d %9.1f tok/s  TTFT p50 %.1f ms  ITL p50 %.2f ms  (%.0fs)",
            system, result.concurrency, result.throughput_tok_s, 1000 * (result.ttft_s["p50"] or 0),
            1000 * (result.itl_s["p50"] or 0), time.perf_counter() - started,
        )  # fmt: skip

    def skip(self, system: str, level: int | None, reason: str) -> None:
        self.skipped.append({"system": system, "concurrency": level, "reason": reason})

    def fail(self, system: str, level: int | None, exc: BaseException, where: str = "") -> None:
        self.skip(system, level, failure_reason(system, exc) + where)


def failure_reason(system: str, exc: BaseException) -> str:
    """How `system`'s failure reads in the report: `peer unavailable: ...` for a peer baseline, `failed: ...` for
    one of the project's own systems."""
    prefix = PEER_UNAVAILABLE if system in PEER_SYSTEMS else FAILED
    return f"{prefix}{type(exc).__name__}: {exc}"


def own_failures(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's `skipped` entries that are failures of the project's own systems (not of a peer)."""
    return [entry for entry in report["skipped"] if entry["reason"].startswith(FAILED)]


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run the benchmark described by `options`; returns the report, also written under `options.out_dir`."""
    options.out_dir.mkdir(parents=True, exist_ok=True)
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    keep = options.checkpoint_dir or options.model_path
    temporary = None if keep else tempfile.mkdtemp(prefix="autoglm-bench-")
    checkpoint_dir = options.checkpoint_dir or Path(temporary or ".")
    run = _Run(options)
    try:
        checkpoint = _build_checkpoint(options, checkpoint_dir)
        low, high = checkpoint.token_range
        run.workload = Workload(
            prompt_len=options.prompt_len,
            new_tokens=options.new_tokens,
            concurrency=options.concurrency,
            token_low=low,
            token_high=high,
            min_requests=options.min_requests,
            seed=options.seed,
        )
        _run_baselines(run, checkpoint)
        worker_config = _worker_config(options, checkpoint, run.workload)
        if "engine" in options.systems:
            _run_engine(run, worker_config)
        settings = _service_settings(options, checkpoint, run.workload)
        if {"service", "service_http"} & set(options.systems):
            _run_service(run, settings)
        if "grpc_floor" in options.systems:
            _run_grpc_floor(run)
        if "hf_serve" in options.systems:
            _run_hf_serve(run, checkpoint)
        model = {**checkpoint.description, "dtype": options.dtype, "quantization": options.quantization}
        report = build_report(
            kind=options.kind,
            machine=describe_machine(),
            model=model,
            workload=run.workload.to_dict(),
            service_settings=settings,
            results=run.results,
            skipped=run.skipped,
        )
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    json_path, md_path = write_report(report, options.out_dir)
    png = write_plot(report, options.out_dir / "bench.png")
    logger.info("wrote %s and %s", json_path, md_path)
    if png is None:
        logger.warning("matplotlib is not installed: no PNG. Later: python -m bench plot %s", json_path)
    return report


def _build_checkpoint(options: BenchOptions, path: Path) -> checkpoints.BenchCheckpoint:
    started = time.perf_counter()
    if options.model_path is not None:
        checkpoint = checkpoints.existing_checkpoint(options.model_path)
    elif options.kind == "cpu":
        checkpoint = checkpoints.tiny_checkpoint(path)
    else:
        checkpoint = checkpoints.glm4_9b_checkpoint(path, options.device, options.dtype)
    logger.info("checkpoint %s ready in %.0fs", checkpoint.description["name"], time.perf_counter() - started)
    return checkpoint


def _run_baselines(run: _Run, checkpoint: checkpoints.BenchCheckpoint) -> None:
    options, workload = run.options, run.workload
    assert workload is not None
    wanted = [s for s in HF_SYSTEMS if s in options.systems]
    model = checkpoint.model if wanted and options.quantization == "none" else None
    checkpoint.model = None  # this function owns the built model now: used below, or freed here
    _free_device_memory()
    if not wanted:
        return
    if model is None:
        model = hf_baselines.load_hf_model(
            str(checkpoint.path), options.device, options.dtype, options.quantization
        )
    if "hf_generate" in wanted:
        run.measure("hf_generate", 1, lambda: hf_baselines.hf_generate_serial(model, workload))
    for level in workload.concurrency:
        if "hf_static_batch" in wanted:
            run.measure("hf_static_batch", level, lambda c=level: hf_baselines.hf_static_batch(model, workload, c))
        if "hf_cuda_graph" in wanted:
            if options.device != "cuda":
                run.skip("hf_cuda_graph", level, "needs a CUDA GPU (CUDA graphs)")
            else:
                run.measure("hf_cuda_graph", level, lambda c=level: cuda_graph.hf_cuda_graph(model, workload, c))
    # Last: generate_batch switches the model's attention to its paged variant.
    if "hf_continuous_batching" in wanted:
        missing = hf_baselines.continuous_batching_missing(model)
        for level in workload.concurrency:
            if missing:
                run.skip("hf_continuous_batching", level, missing)
                continue
            run.measure(
                "hf_continuous_batching",
                level,
                lambda c=level: hf_baselines.hf_continuous_batching(model, workload, c),
            )
    model = None  # the last reference: free the weights before the engine loads its own
    _free_device_memory()


def _worker_config(
    options: BenchOptions, checkpoint: checkpoints.BenchCheckpoint, workload: Workload
) -> WorkerConfig:
    return WorkerConfig(
        worker_id=0,
        model_path=str(checkpoint.path),
        model_id="bench",
        device=options.device,
        dtype=options.dtype,
        quantization=options.quantization,
        max_batch_size=workload.max_concurrency,
        max_seq_len=workload.max_seq_len,
        max_num_batched_tokens=max(options.max_num_batched_tokens, workload.max_concurrency),
        kv_cache_tokens=_kv_cache_tokens(workload),
        num_threads=options.threads,
    )


def _kv_cache_tokens(workload: Workload) -> int:
    """A full context for every request in flight: the workload never preempts, and the engine's cache takes the
    same memory in process and in the service (not a share of whatever the device has free at the time)."""
    return workload.max_concurrency * workload.max_seq_len


def _service_settings(
    options: BenchOptions, checkpoint: checkpoints.BenchCheckpoint, workload: Workload
) -> dict[str, Any]:
    """The service's settings (the `autoglm_rpc.startup.config.Settings` fields), matching the engine's."""
    return {
        "model": str(checkpoint.path),
        "model_id": "bench",
        "workers": 1,
        "device": options.device,
        "dtype": options.dtype,
        "quantization": options.quantization,
        "max_batch_size": workload.max_concurrency,
        "max_seq_len": workload.max_seq_len,
        "max_num_batched_tokens": max(options.max_num_batched_tokens, workload.max_concurrency),
        "max_queue_depth": max(256, workload.requests_for_level(workload.max_concurrency)),
        "kv_cache_tokens": _kv_cache_tokens(workload),
        "worker_threads": options.threads,
        "reflection": False,
        "grace_period": 1.0,
        "log_level": "WARNING",
    }


def _run_engine(run: _Run, config: WorkerConfig) -> None:
    assert run.workload is not None
    try:
        engine = engine_runner.start_engine(config)
    except Exception as exc:
        logger.exception("the engine did not start")
        for level in run.workload.concurrency:
            run.skip("engine", level, f"did not start: {type(exc).__name__}: {exc}")
        return
    workload = run.workload
    for level in workload.concurrency:
        run.measure("engine", level, lambda c=level: engine_runner.run_engine_level(engine, workload, c))
    engine = None  # free the engine's model and KV cache before the service's worker loads
    _free_device_memory()


def _run_service(run: _Run, settings: dict[str, Any]) -> None:
    """The service's levels over gRPC (`service`) and over HTTP (`service_http`), one server for both."""
    workload, options = run.workload, run.options
    assert workload is not None
    protocols = [system for system in ("service", "service_http") if system in options.systems]
    try:
        log = options.out_dir / "service.log"
        with service.ServiceProcess(settings, log, http="service_http" in protocols) as server:
            for system in protocols:
                http_url = server.http_url if system == "service_http" else None
                for level in workload.concurrency:
                    run.measure(system, level, lambda c=level, url=http_url: service.run_service_level(
                        server.target, workload, c, options.client_processes, http_url=url, gateway_pid=server.pid,
                    ))  # fmt: skip
    except Exception as exc:
        logger.exception("the service failed")
        for system in protocols:
            run.fail(system, None, exc, f" (see {options.out_dir / 'service.log'})")


def _run_grpc_floor(run: _Run) -> None:
    """System `grpc_floor`: the bench's clients against a bare grpc.aio server that steps at the engine's pace
    (the engine's inter-token p50 at that level, measured above; 10 ms where the engine did not run)."""
    workload, options = run.workload, run.options
    assert workload is not None
    engine_itl = {r.concurrency: r.itl_s["p50"] for r in run.results if r.system == "engine"}
    log = options.out_dir / "grpc_floor.log"

    def floor_level(concurrency: int, step: float) -> LevelResult:
        with service.FloorProcess(step, log) as server:
            result = service.run_service_level(
                server.target, workload, concurrency, options.client_processes, gateway_pid=server.pid,
                system="grpc_floor",
            )  # fmt: skip
        result.note = f"bare grpc.aio, one message per token, a step every {1e3 * step:.2f} ms"
        return result

    for level in workload.concurrency:
        step = engine_itl.get(level) or FLOOR_DEFAULT_STEP_S
        run.measure("grpc_floor", level, lambda c=level, s=step: floor_level(c, s))


def _run_hf_serve(run: _Run, checkpoint: checkpoints.BenchCheckpoint) -> None:
    """`transformers serve` on a serving copy of the checkpoint (`bench.hf_serve`), driven like `service_http`.

    A missing optional dependency skips it with the reason; a server that fails to start is recorded once, a
    level that fails (a stream of another shape than the client counts) is recorded by `measure`, each as
    `peer unavailable`, and the server's process group is killed either way."""
    options, workload = run.options, run.workload
    assert workload is not None
    reason = hf_serve.missing()
    if reason is None and options.quantization != "none":
        reason = f"not run with quantization {options.quantization} (its bnb-4bit is another configuration)"
    if reason is not None:
        logger.warning("hf_serve skipped: %s", reason)
        for level in workload.concurrency:
            run.skip("hf_serve", level, reason)
        return
    log = options.out_dir / "hf_serve.log"
    scratch = Path(tempfile.mkdtemp(prefix="autoglm-hf-serve-"))
    try:
        served = hf_serve.serving_copy(checkpoint.path, scratch / "model")
        with hf_serve.HfServeProcess(
            served, log, device=options.device, dtype=options.dtype, threads=options.threads,
            cb_num_blocks=hf_serve.cache_blocks(workload),
            cb_max_batch_tokens=max(options.max_num_batched_tokens, workload.max_concurrency),
        ) as server:  # fmt: skip
            spec = {"model": server.model, "tokenizer": str(checkpoint.path / "tokenizer.json")}
            for level in workload.concurrency:
                run.measure("hf_serve", level, lambda c=level: service.run_service_level(
                    "", workload, c, options.client_processes, http_url=server.url, hf_serve=spec,
                ))  # fmt: skip
    except Exception as exc:
        logger.exception("transformers serve failed")
        run.fail("hf_serve", None, exc, f" (see {log})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _free_device_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
