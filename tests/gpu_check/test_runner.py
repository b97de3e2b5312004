"""The stage runner with real subprocesses: budgets, the run's deadline, killing a stage's whole process group."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tools.gpu_check.runner import Runner, Stage

PY = sys.executable


def _runner(tmp_path: Path, seconds_left: float = 120.0) -> Runner:
    deadline = time.monotonic() + seconds_left
    return Runner(tmp_path, dict(os.environ), tmp_path / "logs", tmp_path / "run.log", deadline)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_stage_past_its_budget_is_killed_with_its_children_and_the_next_runs(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # The stage starts a grandchild (as bench starts servers and workers), then outlives its budget.
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(120)\n"
    )
    runner = _runner(tmp_path)
    runner.run_all([Stage("slow", (PY, "-c", script), budget_s=10), Stage("next", (PY, "-c", "print('hi')"), 30)])

    slow, following = runner.results
    assert (slow.status, slow.exit_code) == ("timed out", None)
    assert 10 <= slow.seconds < 60
    assert "its budget: 10s" in slow.note and slow.note.endswith("last output: started")
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)
    assert (following.status, following.exit_code) == ("ok", 0)
    log = (tmp_path / "run.log").read_text()
    assert "===== slow: timed out" in log and "started" in log
    assert "===== next: ok" in log and "hi" in log


def test_failures_needs_and_skips_are_recorded(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    runner.run_all(
        [
            Stage("broken", (PY, "-c", "import sys; print('loading'); sys.exit('out of memory')"), 30),
            Stage("after-broken", (PY, "-c", "pass"), 30, needs=("broken",)),
            Stage("nothing", None, 30, note="nothing to install"),
            Stage("after-nothing", (PY, "-c", "pass"), 30, needs=("missing",)),
        ]
    )
    statuses = [(r.name, r.status, r.exit_code, r.note) for r in runner.results]
    assert statuses == [
        ("broken", "failed", 1, "exit code 1: out of memory"),
        ("after-broken", "not run", None, "needs broken failed"),
        ("nothing", "skipped", None, "nothing to install"),
        ("after-nothing", "not run", None, "needs missing not run"),
    ]
    assert "===== after-broken: not run: needs broken failed" in (tmp_path / "run.log").read_text()


def test_the_runs_deadline_caps_a_stage_and_stops_later_ones(tmp_path: Path) -> None:
    runner = _runner(tmp_path, seconds_left=7.0)
    sleep = (PY, "-c", "import time; time.sleep(120)")
    runner.run_all([Stage("long", sleep, 600), Stage("later", (PY, "-c", ""), 30)])
    long, later = runner.results
    assert long.status == "timed out" and "the run's deadline" in long.note
    assert long.seconds < 60
    assert (later.status, later.note) == ("not run", "no time left in the run's budget")
