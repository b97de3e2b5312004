"""The report: JSON schema, the service/engine comparison, GPU targets, and the markdown rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.plot import write_plot
from bench.report import SCHEMA, build_report, merge_reports, render_markdown, write_report
from bench.stats import RequestTiming, summarize


def _result(system: str, concurrency: int, tokens_per_request: int, wall: float, step: float):
    timings = [RequestTiming(0.0, [step * (i + 1) for i in range(tokens_per_request)]) for _ in range(concurrency)]
    return summarize(system, concurrency, timings, wall)


def _report(kind: str = "cpu", quantization: str = "none") -> dict:
    results = [
        _result("service", 4, 8, wall=2.0, step=0.012),
        _result("hf_generate", 1, 8, wall=4.0, step=0.5),
        _result("engine", 1, 8, wall=0.5, step=0.05),
        _result("engine", 4, 8, wall=1.0, step=0.01),
        _result("service", 1, 8, wall=0.6, step=0.055),
    ]
    return build_report(
        kind=kind,
        machine={"cpu": "Test CPU", "cpu_count": 2, "torch": "2.x", "transformers": "5.x", "git_commit": "abc"},
        model={"name": "tiny", "num_hidden_layers": 2, "quantization": quantization},
        workload={"prompt_len": 8, "new_tokens": 8, "min_requests": 1, "concurrency": [1, 4]},
        service_settings={"max_batch_size": 4},
        results=results,
        skipped=[{"system": "hf_cuda_graph", "concurrency": 1, "reason": "needs a CUDA GPU"}],
    )


def test_report_has_every_section_and_results_in_system_order() -> None:
    report = _report()
    assert report["schema"] == SCHEMA
    expected = {"kind", "created", "machine", "model", "workload", "service_settings", "results", "comparison"}
    assert expected | {"targets", "skipped"} <= set(report)
    order = [(r["system"], r["concurrency"]) for r in report["results"]]
    assert order == [("hf_generate", 1), ("engine", 1), ("engine", 4), ("service", 1), ("service", 4)]
    assert report["targets"] == []  # CPU runs are not held to the GPU goals
    json.dumps(report)  # serialisable as it is


def test_comparison_is_service_against_engine_per_level() -> None:
    rows = {row["concurrency"]: row for row in _report()["comparison"]}
    assert rows[1]["engine_vs_hf_generate"] == pytest.approx((8 / 0.5) / (8 / 4.0))
    assert rows[4]["service_vs_engine"] == pytest.approx((32 / 2.0) / (32 / 1.0))
    assert rows[4]["ttft_p50_added_ms"] == pytest.approx(2.0)
    assert rows[1]["itl_p50_added_ms"] == pytest.approx(5.0)
    assert rows[4]["wall_per_token_added_ms"] == pytest.approx(1000 * (2.0 / 32 - 1.0 / 32))


def test_gpu_targets_say_what_was_met_and_what_was_not_run() -> None:
    targets = {t["goal"]: t for t in _report(kind="gpu")["targets"]}
    one = targets["engine one at a time, tok/s"]
    assert one["value"] == pytest.approx(16.0) and one["met"] is False
    assert targets["engine 256 concurrent, tok/s"]["met"] is None  # level 256 was not run
    added = targets["TTFT p50 added by the service at 1, ms"]
    assert added["value"] == pytest.approx(5.0) and added["met"] is False
    nf4 = {t["goal"] for t in _report(kind="gpu", quantization="nf4")["targets"]}
    assert "engine 256 concurrent, TTFT p99 s" not in nf4


def test_markdown_tables(tmp_path: Path) -> None:
    report = _report()
    json_path, md_path = write_report(report, tmp_path / "run")
    assert json.loads(json_path.read_text()) == report
    markdown = md_path.read_text()
    assert markdown == render_markdown(report)
    assert "Test CPU (2 cores)" in markdown
    assert "| system | C=1 | C=4 |" in markdown
    assert "| hf_generate | 2.0 | — |" in markdown
    assert "| engine | 16.0 | 32.0 |" in markdown
    assert "| 4 | 32.0 | 16.0 | 0.50 | +2.00 |" in markdown
    assert "- hf_cuda_graph (C=1): needs a CUDA GPU" in markdown


def test_plot_is_written_when_matplotlib_is_there(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = write_plot(_report(), tmp_path / "bench.png")
    assert path is not None and path.read_bytes().startswith(b"\x89PNG")


def test_merge_joins_parts_of_one_workload() -> None:
    engine_part, service_part = _report(), _report()
    engine_part["results"] = [r for r in engine_part["results"] if r["system"] != "service"]
    service_part["results"] = [r for r in service_part["results"] if r["system"] == "service"]
    service_part["skipped"] = []
    merged = merge_reports([engine_part, service_part])
    assert merged["results"] == _report()["results"]
    assert [row["concurrency"] for row in merged["comparison"] if "service_vs_engine" in row] == [1, 4]
    assert merged["skipped"] == engine_part["skipped"]
    other = _report()
    other["workload"] = {**other["workload"], "new_tokens": 16}
    with pytest.raises(ValueError, match="workload"):
        merge_reports([engine_part, other])
