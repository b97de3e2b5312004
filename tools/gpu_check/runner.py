"""Run stages one after the other, each under its own time budget, none past the run's deadline.

A stage is a command run in a process group of its own (a new session), so that everything it starts (a server,
its worker processes, client processes) goes with it: when the budget runs out the group gets SIGTERM, then
SIGKILL after a grace period, and the stage is recorded as timed out; the group is also killed after a normal
exit, in case the stage left something behind. The next stage then starts. A stage whose `needs` did not succeed,
or that would get less than `MIN_STAGE_S` before the deadline, is not run. Each stage's output (stdout and stderr
together) goes to its own file, appended to the run's log when the stage ends, between a line with its command
and a line with how it ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MIN_STAGE_S = 5.0  # a stage is not started with less time than this left before the deadline
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL
EXTRA_LOG_TAIL_BYTES = 256 * 1024  # of each extra log (a server's) appended to the run's log


@dataclass(frozen=True, slots=True)
class Stage:
    """One step: `command` (None: nothing to run, recorded as skipped with `note`) under `budget_s` seconds.

    `needs` names stages that must have ended `ok` first; `extra_logs` are files the stage writes (a server's
    log) whose tails are appended to the run's log after it.
    """

    name: str
    command: tuple[str, ...] | None
    budget_s: float
    needs: tuple[str, ...] = ()
    note: str = ""
    extra_logs: tuple[Path, ...] = ()


@dataclass(slots=True)
class StageResult:
    """How a stage ended: ok, failed (non-zero exit), timed out, not run, or skipped (nothing to do)."""

    name: str
    status: str
    budget_s: float
    seconds: float = 0.0
    exit_code: int | None = None
    note: str = ""
    log: str = ""  # the stage's own output file

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Runner:
    """Runs stages in order against one deadline (a `time.monotonic()` value), in `cwd` with `env`."""

    cwd: Path
    env: Mapping[str, str]
    log_dir: Path
    run_log: Path
    deadline: float
    results: list[StageResult] = field(default_factory=list)

    def run_all(self, stages: Sequence[Stage], after_each: Callable[[StageResult], None] | None = None) -> None:
        """Run `stages` in order; `after_each` sees every result as soon as it is known."""
        for stage in stages:
            result = self.run(stage)
            self.results.append(result)
            logger.info(
                "stage %-18s %-9s %6.1fs of %4.0fs  %s",
                stage.name,
                result.status,
                result.seconds,
                result.budget_s,
                result.note,
            )
            if after_each is not None:
                after_each(result)

    def run(self, stage: Stage) -> StageResult:
        ended = {r.name: r.status for r in self.results}
        unmet = [need for need in stage.needs if ended.get(need) != "ok"]
        if unmet:
            reason = ", ".join(f"{need} {ended.get(need, 'not run')}" for need in unmet)
            return self._not_executed(StageResult(stage.name, "not run", stage.budget_s, note=f"needs {reason}"))
        if stage.command is None:
            return self._not_executed(StageResult(stage.name, "skipped", stage.budget_s, note=stage.note))
        remaining = self.deadline - time.monotonic()
        if remaining < MIN_STAGE_S:
            note = "no time left in the run's budget"
            return self._not_executed(StageResult(stage.name, "not run", stage.budget_s, note=note))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{stage.name}.log"
        with self.run_log.open("a") as run_log:  # the command first, in case the whole run is cut short
            run_log.write(f"\n===== {stage.name}: $ {' '.join(stage.command)}\n")
        result = self._execute(stage, min(stage.budget_s, remaining), log_path)
        self._append_logs(stage, result, log_path)
        return result

    def _not_executed(self, result: StageResult) -> StageResult:
        with self.run_log.open("a") as run_log:
            run_log.write(f"\n===== {result.name}: {result.status}: {result.note}\n")
        return result

    def _execute(self, stage: Stage, budget: float, log_path: Path) -> StageResult:
        assert stage.command is not None
        started = time.monotonic()
        with log_path.open("w") as output:
            process = subprocess.Popen(
                stage.command,
                cwd=self.cwd,
                env=dict(self.env),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = process.wait(timeout=budget)
            except subprocess.TimeoutExpired:
                stop_group(process)
                seconds = time.monotonic() - started
                cut = "the run's deadline" if budget < stage.budget_s else "its budget"
                note = f"killed after {seconds:.0f}s ({cut}: {budget:.0f}s); last output: {last_line(log_path)}"
                return StageResult(stage.name, "timed out", stage.budget_s, seconds, None, note, str(log_path))
            except BaseException:  # the driver itself is being stopped: take the stage down with it
                stop_group(process)
                raise
            finally:
                _kill_group(process.pid, signal.SIGKILL)  # whatever the stage left running
        status = "ok" if code == 0 else "failed"
        note = stage.note if code == 0 else f"exit code {code}: {last_line(log_path)}"
        return StageResult(
            stage.name, status, stage.budget_s, time.monotonic() - started, code, note, str(log_path)
        )

    def _append_logs(self, stage: Stage, result: StageResult, log_path: Path) -> None:
        with self.run_log.open("a") as run_log:
            run_log.write(log_path.read_text(errors="replace"))
            for extra in stage.extra_logs:
                if extra.is_file():
                    run_log.write(
                        f"\n----- {stage.name}: the last {EXTRA_LOG_TAIL_BYTES // 1024} KiB of {extra}\n"
                    )
                    run_log.write(_tail(extra, EXTRA_LOG_TAIL_BYTES))
            note = f": {result.note}" if result.note else ""
            run_log.write(f"\n===== {stage.name}: {result.status} in {result.seconds:.1f}s{note}\n")


def stop_group(process: subprocess.Popen[Any]) -> None:
    """SIGTERM to the process's group, SIGKILL after `KILL_GRACE_S`; returns once the leader is reaped."""
    _kill_group(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=KILL_GRACE_S)
    _kill_group(process.pid, signal.SIGKILL)
    process.wait()


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, sig)


def last_line(path: Path, limit: int = 160) -> str:
    """The last non-blank line of a stage's output, shortened to `limit` characters (for the stage table)."""
    lines = [line.strip() for line in _tail(path, 16 * 1024).splitlines() if line.strip()]
    line = lines[-1] if lines else "(no output)"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _tail(path: Path, num_bytes: int) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - num_bytes))
        return handle.read().decode(errors="replace")
