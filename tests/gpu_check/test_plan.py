"""The check's plan and figures, nothing run: the wheels needed, the stages chosen, budgets, the targets table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import build_report
from bench.stats import RequestTiming, summarize
from tools.gpu_check import plan, targets, wheels
from tools.gpu_check.__main__ import parse_budgets, prepare_work

ROOT = Path(__file__).resolve().parents[2]


def _layout(tmp_path: Path) -> plan.Layout:
    return plan.Layout(ROOT, tmp_path / "out", tmp_path / "work", tmp_path / "wheels", sys.executable)


def test_the_driver_imports_neither_torch_nor_the_service() -> None:
    code = "import sys, tools.gpu_check.__main__; print(' '.join(sys.modules))"
    finished = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(finished.stdout.split())
    assert not {"torch", "transformers", "grpc", "autoglm_rpc", "workers"} & loaded


def test_only_missing_or_too_old_wheels_are_installed() -> None:
    installed = {
        "bitsandbytes": "0.50.2",  # exactly the carried version: kept
        "grpcio": "1.80.0",  # older than the stubs and grpcio-health-checking need: replaced
        "protobuf": "7.40.0",  # newer but inside the accepted range: kept
        "opentelemetry-api": "1.40.0",  # another version than the sdk pins: replaced
    }
    subset = tuple(w for w in wheels.WHEELS if w.name in {*installed, "grpcio-status"})
    assert [w.name for w in wheels.needed(subset, installed)] == ["grpcio-status", "opentelemetry-api", "grpcio"]


def test_every_wheel_is_listed_once_and_accepts_its_own_version() -> None:
    from packaging.requirements import Requirement

    names = [wheels.canonical(w.name) for w in wheels.WHEELS]
    assert len(names) == len(set(names))
    for wheel in wheels.WHEELS:
        assert Requirement(wheel.requirement).specifier.contains(wheel.version, prereleases=True), wheel


def test_install_command_is_offline(tmp_path: Path) -> None:
    command = wheels.install_command("python3", [tmp_path / "a.whl"], tmp_path / "site")
    assert {"--no-index", "--no-deps", "--target"} <= set(command)
    assert command[-1] == str(tmp_path / "a.whl")


def test_gpu_test_files_are_found_by_their_marker() -> None:
    files = plan.gpu_test_files(ROOT)
    assert {"tests/e2e/test_gpu.py", "tests/bench/test_gpu.py"} <= set(files)
    assert files[-1] == "tests/bench/test_gpu.py"


def test_gpu_plan_benchmarks_256_streams_within_eight_minutes(tmp_path: Path) -> None:
    stages = plan.build_stages(_layout(tmp_path), rehearse=False, budgets=plan.GPU_BUDGETS)
    assert [s.name for s in stages] == list(plan.STAGES)
    assert sum(plan.GPU_BUDGETS.values()) <= plan.GPU_TOTAL_BUDGET_S < 8 * 60
    by_name = {s.name: s for s in stages}
    bf16 = by_name["bench-bf16-engine"].command
    assert bf16 is not None and bf16[1:4] == ("-m", "bench", "gpu")
    assert "1,256" in bf16 and "hf_cuda_graph,engine" in bf16
    assert "service" in (by_name["bench-nf4-service"].command or ())
    assert "--require-cuda" in (by_name["preflight"].command or ())
    assert by_name["tracing"].needs == ("checkpoint",)


def test_the_performance_page_states_the_gpu_budgets() -> None:
    page = (ROOT / "docs" / "performance.md").read_text()
    section = page[page.index("## GPU check") :]
    for stage, seconds in plan.GPU_BUDGETS.items():
        assert f"| {stage} | {seconds} |" in section
    assert f"budget of {plan.GPU_TOTAL_BUDGET_S:.0f} s" in section


def test_the_gpu_benchmark_commands_parse(tmp_path: Path) -> None:
    """The rehearsal runs `bench cpu`; the GPU's `bench gpu` options are checked against its parser here."""
    from bench.__main__ import build_parser

    for stage in plan.build_stages(_layout(tmp_path), rehearse=False, budgets=plan.GPU_BUDGETS):
        if stage.name.startswith("bench-"):
            assert stage.command is not None
            args = build_parser().parse_args(list(stage.command[3:]))
            assert (args.command, args.dtype, args.concurrency) == ("gpu", stage.name.split("-")[1], "1,256")


def test_stage_selection_keeps_what_a_stage_needs(tmp_path: Path) -> None:
    stages = plan.build_stages(_layout(tmp_path), rehearse=True, budgets=plan.REHEARSAL_BUDGETS)
    chosen = plan.select(stages, ["tracing"])
    assert [s.name for s in chosen] == ["install", "checkpoint", "tracing"]
    with pytest.raises(ValueError, match="--stages: unknown bench"):
        plan.select(stages, ["bench"])


def test_budget_overrides_are_validated() -> None:
    assert parse_budgets(["tracing=30"], rehearse=False)["tracing"] == 30
    for bad, message in (("nope=3", "no stage 'nope'"), ("tracing=x", "a number"), ("tracing=0", "positive")):
        with pytest.raises(ValueError, match=message):
            parse_budgets([bad], rehearse=False)


def _level(system: str, concurrency: int, tokens_per_s: float, ttft: float) -> object:
    """A level whose requests get 10 tokens each at `tokens_per_s` overall, the first after `ttft` seconds."""
    wall = 10 * concurrency / tokens_per_s
    step = (wall - ttft) / 9
    timings = [RequestTiming(0.0, [ttft + i * step for i in range(10)]) for _ in range(concurrency)]
    return summarize(system, concurrency, timings, wall)


def test_targets_read_a_gpu_report_and_say_why_a_figure_is_missing() -> None:
    results = [
        _level("engine", 1, 200.0, 0.020),
        _level("engine", 256, 8000.0, 1.5),
        _level("service", 1, 190.0, 0.021),
        _level("service", 256, 7600.0, 1.503),
        _level("hf_cuda_graph", 256, 2000.0, 2.5),
    ]
    report = build_report(kind="gpu", machine={}, model={}, workload={}, service_settings={}, results=results)
    sources = {"bf16": report, "nf4": None, "tracing": {"throughput_change_pct": -0.4}}
    rows = targets.evaluate(sources, {"nf4": "not measured (bench-nf4 timed out)"}, high=256)
    by_goal = {row["goal"]: row for row in rows}

    one = by_goal["bf16: engine, 1 request, tok/s"]
    assert (one["value"], one["met"], one["target"]) == (pytest.approx(200.0), True, ">= 150 tok/s")
    many = by_goal["bf16: engine, 256 concurrent, tok/s"]
    assert (many["value"], many["met"]) == (pytest.approx(8000.0), False)
    assert many["hf_cuda_graph_this_run"] == pytest.approx(2000.0)
    assert "2,166" in many["anchor_h200"]
    assert by_goal["bf16: service / engine throughput at 256 streams"]["value"] == pytest.approx(0.95)
    added = by_goal["bf16: TTFT p50 added by the service at 256 streams"]
    assert (added["value"], added["met"]) == (pytest.approx(3.0), False)
    assert by_goal["tracing at 10 % sampling: throughput cost"]["value"] == pytest.approx(0.4)
    nf4 = by_goal["nf4: engine, 256 concurrent, tok/s"]
    assert (nf4["value"], nf4["met"], nf4["not_measured"]) == (None, None, "not measured (bench-nf4 timed out)")

    table = "\n".join(targets.markdown_table(rows, rehearsal=False))
    row = "| bf16: engine, 256 concurrent, tok/s | >= 10,000 tok/s | 8,000 tok/s | **no** | 2,000 tok/s |"
    assert row in table
    assert "| nf4: engine, 1 request, tok/s | >= 150 tok/s | not measured (bench-nf4 timed out) | — |" in table


def test_a_scratch_folder_is_cleared_only_when_this_tool_made_it(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to clear it"):
        prepare_work(precious)
    assert (precious / "notes.txt").exists()

    work, temporary = prepare_work(tmp_path / "work")
    (work / "stale.json").write_text("{}")
    assert prepare_work(work) == (work, False) and not temporary
    assert not (work / "stale.json").exists()
