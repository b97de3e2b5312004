"""`make gpu-check REHEARSE=1`'s command end to end: every stage on the CPU with the demo model, real processes.

The nf4 service's benchmark stage gets a 1-second budget, so the run also shows a stage killed for overrunning,
recorded as such, its rows marked unmeasured, and the stages after it going on. About a minute of CPU on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(660)  # bounded, and generous: a loaded 2-core machine can take several times the usual 2 min
def test_rehearsal_writes_the_results_folder(tmp_path: Path) -> None:
    out = tmp_path / "results"
    work = tmp_path / "work"
    budgets = ["--budget", "bench-nf4-service=1", "--total-budget", "600"]
    command = [sys.executable, "-m", "tools.gpu_check", "--rehearse", "--out", str(out), "--work", str(work)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "autoglm-proto")])}
    finished = subprocess.run(
        [*command, *budgets], cwd=ROOT, env=env, capture_output=True, text=True, timeout=640, check=False
    )

    assert finished.returncode == 1, finished.stderr[-3000:]  # one stage timed out
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.json", "gpu-check.log", "gpu-check.md"]
    record = json.loads((out / "gpu-check.json").read_text())
    statuses = {s["name"]: s["status"] for s in record["stages"]}
    assert statuses == {"install": "skipped", "preflight": "ok", "gpu-tests": "ok", "checkpoint": "ok",
                        "bench-bf16-engine": "ok", "bench-bf16-service": "ok", "bench-nf4-engine": "ok",
                        "bench-nf4-service": "timed out", "tracing": "ok"}  # fmt: skip
    assert (record["mode"], record["complete"]) == ("rehearsal", True)
    assert record["environment"]["cuda_available"] is False and record["environment"]["problems"] == []
    assert record["tests"]["counts"].get("SKIPPED", 0) >= 1 and record["tests"]["failed"] == []

    measured = {(r["system"], r["concurrency"]) for r in record["bench"]["bf16"]["results"]}
    assert measured == {("engine", 1), ("engine", 2), ("service", 1), ("service", 2)}
    nf4 = {(r["system"], r["concurrency"]) for r in record["bench"]["nf4"]["results"]}
    assert nf4 == {("engine", 1), ("engine", 2)}  # the service's stage was killed
    assert record["tracing"]["requests_per_round"] == 2
    rows = {row["goal"]: row for row in record["targets"]}
    assert rows["bf16: engine, 2 concurrent, tok/s"]["value"] > 0
    assert rows["nf4: engine, 2 concurrent, tok/s"]["value"] > 0
    assert rows["tracing at 10 % sampling: throughput cost"]["value"] is not None

    markdown = (out / "gpu-check.md").read_text()
    assert markdown.startswith("# GPU check: REHEARSAL on the CPU")
    assert "| bench-nf4-service | timed out |" in markdown
    header = (
        "| goal | target | this run | met | HF CUDA graph, this run | plain transformers, H200, bf16 (anchor) |"
    )
    assert header in markdown
    assert "| bf16: engine, 1 request, tok/s | >= 150 tok/s |" in markdown
    assert "13.2 tok/s (generate(), one request)" in markdown and "2,166 tok/s (CUDA-graph" in markdown
    unmeasured = (
        "| nf4: TTFT p50 added by the service at 1 stream | <= 2 ms | not measured (bench-nf4-service timed out) |"
    )
    assert unmeasured in markdown
    assert "## Benchmark, bf16" in markdown and "### The service against the engine in process" in markdown
    log = (out / "gpu-check.log").read_text()
    assert "===== bench-nf4-service: timed out" in log and "===== tracing: ok" in log
