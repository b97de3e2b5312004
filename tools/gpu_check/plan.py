"""What a check runs: the stages, their commands and budgets, on the GPU and in the CPU rehearsal.

Stages, in order (each one a subprocess; see `runner`):

    install     the carried wheels this machine lacks, into a folder put first on PYTHONPATH (`wheels`)
    preflight   every import the later stages need, versions, the GPU, nf4 on it (`preflight`)
    gpu-tests   pytest -m gpu on the test files that hold `gpu`-marked tests
    checkpoint  the model, built once (`checkpoint`): GLM-4-9B shape in bf16 / the demo model
    bench-bf16-engine   `python -m bench gpu --dtype bf16`: the HF CUDA-graph baseline and the engine
    bench-bf16-service  the same for the whole service (its report is merged with the engine's)
    bench-nf4-engine, bench-nf4-service   the same with nf4 weights (no baseline: its load costs a stage)
    tracing     `bench/tracing_overhead.py`: tracing off against 10 % sampling, alternating rounds

The benchmark runs in four stages, not two, so that a slow one loses its own figures only. The rehearsal runs
the same stages on the CPU: the demo model, concurrency 1 and 2, a few tokens, `bench cpu` (which runs float32
weights, so its nf4 stages are a second float32 run: plumbing, not nf4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tools.gpu_check import wheels
from tools.gpu_check.runner import Stage

PRECISIONS = ("bf16", "nf4")
PARTS = ("engine", "service")  # the systems of each benchmark stage: the engine (and baseline), then the service
BENCH_STAGES = tuple(f"bench-{precision}-{part}" for precision in PRECISIONS for part in PARTS)
STAGES = ("install", "preflight", "gpu-tests", "checkpoint", *BENCH_STAGES, "tracing")

# Seconds. On the GPU they add up to the run's budget, which leaves the command inside 8 minutes.
GPU_BUDGETS = {
    "install": 15,
    "preflight": 20,
    "gpu-tests": 40,
    "checkpoint": 50,
    "bench-bf16-engine": 95,
    "bench-bf16-service": 60,
    "bench-nf4-engine": 65,
    "bench-nf4-service": 55,
    "tracing": 60,  # two servers, each loading the model
}
GPU_TOTAL_BUDGET_S = 465.0  # the budgets, and 5 s for the last report
# Ceilings for a loaded 2-core machine; the rehearsal takes a fraction of them.
REHEARSAL_BUDGETS = {
    "install": 30,
    "preflight": 90,
    "gpu-tests": 120,
    "checkpoint": 120,
    **dict.fromkeys(BENCH_STAGES, 180),
    "tracing": 240,
}
REHEARSAL_TOTAL_BUDGET_S = 1200.0

_GPU_TEST_MARK = re.compile(r"pytest\.mark\.gpu\b")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where things are: the repository, the results folder, scratch space, the wheels, the interpreter."""

    root: Path
    out: Path
    work: Path
    wheel_dir: Path
    python: str

    @property
    def site(self) -> Path:
        """Where the install stage puts the wheels (first on every later stage's PYTHONPATH)."""
        return self.work / "site"

    @property
    def checkpoint(self) -> Path:
        return self.work / "checkpoint"

    def bench_out(self, precision: str, part: str) -> Path:
        return self.work / f"bench-{precision}-{part}"

    @property
    def preflight_json(self) -> Path:
        return self.work / "preflight.json"


@dataclass(frozen=True, slots=True)
class Levels:
    """The benchmark's shape: concurrency levels (the last is the "many streams" level) and tokens."""

    concurrency: tuple[int, ...]
    prompt_len: int
    new_tokens: int

    @property
    def high(self) -> int:
        return self.concurrency[-1]


GPU_LEVELS = Levels(concurrency=(1, 256), prompt_len=256, new_tokens=128)
REHEARSAL_LEVELS = Levels(concurrency=(1, 2), prompt_len=8, new_tokens=4)


def levels_for(rehearse: bool) -> Levels:
    return REHEARSAL_LEVELS if rehearse else GPU_LEVELS


def build_stages(layout: Layout, rehearse: bool, budgets: dict[str, float]) -> list[Stage]:
    """Every stage of a GPU run (`rehearse` False) or of its CPU rehearsal, with `budgets` (seconds by name)."""
    py, levels = layout.python, levels_for(rehearse)
    shape = "demo" if rehearse else "glm4-9b"
    preflight = [py, "-m", "tools.gpu_check.preflight", "--out", str(layout.preflight_json)]
    stages = [
        install_stage(layout, budgets["install"], rehearse),
        Stage("preflight", (*preflight, *([] if rehearse else ["--require-cuda"])), budgets["preflight"]),
        gpu_tests_stage(layout, budgets["gpu-tests"]),
        Stage(
            "checkpoint",
            (py, "-m", "tools.gpu_check.checkpoint", "--shape", shape, "--out", str(layout.checkpoint)),
            budgets["checkpoint"],
        ),
    ]
    for precision in PRECISIONS:
        for part in PARTS:
            name, out = f"bench-{precision}-{part}", layout.bench_out(precision, part)
            command = tuple(_bench_command(layout, precision, part, levels, rehearse))
            stages.append(Stage(name, command, budgets[name], ("checkpoint",), extra_logs=(out / "service.log",)))
    stages.append(Stage("tracing", tuple(_tracing_command(layout, rehearse)), budgets["tracing"], ("checkpoint",)))
    return stages


def install_stage(layout: Layout, budget: float, rehearse: bool) -> Stage:
    """pip, offline, for the wheels this interpreter lacks; skipped when nothing is missing."""
    missing = wheels.needed(wheels.WHEELS, wheels.installed_versions())
    if not missing:
        return Stage("install", None, budget, note="every carried package is here already")
    names = ", ".join(w.requirement for w in missing)
    files = [wheels.wheel_file(layout.wheel_dir, w) if layout.wheel_dir.is_dir() else None for w in missing]
    absent = [w.name for w, f in zip(missing, files, strict=True) if f is None]
    if rehearse:
        return Stage("install", None, budget, note=f"rehearsal: would install {names}")
    if absent:  # a command that fails with the reason, so the stage is recorded as failed and logs why
        reason = f"no wheel in {layout.wheel_dir} for {', '.join(absent)}: run make gpu-wheels and carry it"
        return Stage("install", (layout.python, "-c", f"raise SystemExit({reason!r})"), budget)
    command = wheels.install_command(layout.python, [f for f in files if f is not None], layout.site)
    return Stage("install", tuple(command), budget, note=f"installed {names}")


def gpu_test_files(root: Path) -> list[str]:
    """The test files that hold `gpu`-marked tests, relative paths; tests/bench/ last (the slowest, and what the
    benchmark stages exercise at full size anyway), so a stage cut short has run the engine's and service's."""
    found = [p for p in (root / "tests").rglob("test_*.py") if _GPU_TEST_MARK.search(p.read_text())]
    return sorted((str(p.relative_to(root)) for p in found), key=lambda f: (f.startswith("tests/bench/"), f))


def gpu_tests_stage(layout: Layout, budget: float) -> Stage:
    files = gpu_test_files(layout.root)
    if not files:
        return Stage("gpu-tests", None, budget, note="no test file holds a gpu-marked test")
    command = (layout.python, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rfE", "-m", "gpu", *files)
    return Stage("gpu-tests", command, budget)


def _bench_command(layout: Layout, precision: str, part: str, levels: Levels, rehearse: bool) -> list[str]:
    common = [
        "--model", str(layout.checkpoint), "--out", str(layout.bench_out(precision, part)),
        "--concurrency", ",".join(map(str, levels.concurrency)),
        "--prompt-len", str(levels.prompt_len), "--new-tokens", str(levels.new_tokens),
    ]  # fmt: skip
    # The HF CUDA-graph baseline beside bf16 only: loading the model in nf4 once more would cost a stage's time.
    with_baseline = precision == "bf16" or rehearse
    systems = ("hf_cuda_graph,engine" if with_baseline else "engine") if part == "engine" else "service"
    if rehearse:
        return [layout.python, "-m", "bench", "cpu", *common, "--systems", systems, "--min-requests", "2",
                "--max-num-batched-tokens", "64", "--client-processes", "1", "--threads", "1"]  # fmt: skip
    return [layout.python, "-m", "bench", "gpu", "--dtype", precision, *common, "--systems", systems]


def _tracing_command(layout: Layout, rehearse: bool) -> list[str]:
    # Both arms' servers share the device: a short context and a fifth of the free memory each for the KV cache
    # (by default the first would size its cache for the checkpoint's whole context from 90 % of what is free).
    command = [
        layout.python, str(layout.root / "bench" / "tracing_overhead.py"), "--model", str(layout.checkpoint),
        "--json", "--sample-ratio", "0.1", "--max-seq-len", "512", "--kv-cache-memory-fraction", "0.2",
    ]  # fmt: skip
    if rehearse:
        return [*command, "--device", "cpu", "--rounds", "1", "--concurrency", "2", "--requests", "2",
                "--max-new-tokens", "4", "--worker-threads", "1"]  # fmt: skip
    return [*command, "--device", "cuda", "--rounds", "4", "--concurrency", "32", "--requests", "64",
            "--max-new-tokens", "32"]  # fmt: skip


def select(stages: list[Stage], names: list[str] | None) -> list[Stage]:
    """`stages` restricted to `names` and what they need (install always), in the stages' order."""
    if not names:
        return stages
    check_names(names)
    by_name = {stage.name: stage for stage in stages}
    wanted = {"install", *names}
    for name in list(wanted):
        wanted.update(by_name[name].needs)
    return [stage for stage in stages if stage.name in wanted]


def check_names(names: list[str]) -> None:
    """ValueError naming any of `names` that is not a stage."""
    unknown = sorted(set(names) - set(STAGES))
    if unknown:
        raise ValueError(f"--stages: unknown {', '.join(unknown)}; choose from {', '.join(STAGES)}")
