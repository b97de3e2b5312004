"""`python -m tools.gpu_check`: one prepared run on a CUDA GPU machine, or its rehearsal on the CPU.

    python3 -m tools.gpu_check --out RESULTS [--wheels .gpu-wheels]     # on the GPU machine (make gpu-check)
    python -m tools.gpu_check --rehearse --out RESULTS                  # on the CPU (make gpu-check REHEARSE=1)
    ... --stages bench-bf16-engine,tracing --budget bench-bf16-engine=150 --total-budget 300

The driver imports no torch, no gateway and no worker code (only plain-Python `bench.report`): every stage is a
subprocess (see `plan` and `runner`), so a broken import shows as a failed stage, never as a dead driver. Exit
code 0 when every stage ended ok or skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from tools.gpu_check import plan, report
from tools.gpu_check.runner import Runner

logger = logging.getLogger("gpu_check")

ROOT = Path(__file__).resolve().parents[2]
_WORK_MARKER = ".gpu-check-work"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder (gpu-check.json, .md, .log)")
    parser.add_argument("--rehearse", action="store_true", help="on the CPU: the demo model, tiny settings")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".gpu-wheels", help="the wheels brought along")
    parser.add_argument("--work", type=Path, help="scratch folder, kept (default: a temporary one, removed)")
    parser.add_argument("--stages", help=f"run only these (and what they need): {','.join(plan.STAGES)}")
    parser.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS", help="a stage's budget")
    parser.add_argument("--total-budget", type=float, help="seconds for the whole run (default: 465 on the GPU)")
    return parser


def parse_budgets(overrides: list[str], rehearse: bool) -> dict[str, float]:
    """The profile's budgets with `STAGE=SECONDS` overrides; ValueError names a bad one."""
    budgets = {**(plan.REHEARSAL_BUDGETS if rehearse else plan.GPU_BUDGETS)}
    for item in overrides:
        name, _, seconds = item.partition("=")
        if name not in budgets:
            raise ValueError(f"--budget {item}: no stage {name!r}; stages: {', '.join(plan.STAGES)}")
        try:
            budgets[name] = float(seconds)
        except ValueError:
            raise ValueError(f"--budget {item}: seconds must be a number") from None
        if budgets[name] <= 0:
            raise ValueError(f"--budget {item}: seconds must be positive")
    return budgets


def stage_environment(layout: plan.Layout) -> dict[str, str]:
    """The stages' environment: the carried wheels, then this tree and its stubs, first on PYTHONPATH."""
    paths = [str(layout.site), str(layout.root), str(layout.root / "autoglm-proto"), os.environ.get("PYTHONPATH")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def prepare_work(work: Path | None) -> tuple[Path, bool]:
    """The scratch folder, emptied (only one this tool made before), and whether it is temporary."""
    if work is None:
        return Path(tempfile.mkdtemp(prefix="gpu-check-")), True
    if work.exists() and any(work.iterdir()):
        if not (work / _WORK_MARKER).exists():
            raise ValueError(f"--work {work}: not empty and not a gpu-check scratch folder; refusing to clear it")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / _WORK_MARKER).touch()
    return work, False


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def run(args: argparse.Namespace) -> int:
    budgets = parse_budgets(args.budget, args.rehearse)
    names = _names(args.stages)
    plan.check_names(names or [])
    total = args.total_budget or (plan.REHEARSAL_TOTAL_BUDGET_S if args.rehearse else plan.GPU_TOTAL_BUDGET_S)
    started = time.monotonic()
    work, temporary = prepare_work(args.work)
    layout = plan.Layout(ROOT, args.out.resolve(), work.resolve(), args.wheels.resolve(), sys.executable)
    record = report.Record(layout, args.rehearse, plan.levels_for(args.rehearse), total)
    try:
        stages = plan.select(plan.build_stages(layout, args.rehearse, budgets), names)
        layout.out.mkdir(parents=True, exist_ok=True)
        (layout.out / report.LOG_NAME).write_text(f"gpu-check ({'rehearsal' if args.rehearse else 'gpu'})\n")
        report.write(record)
        # 5 s of the total are kept for the last report.
        runner = Runner(
            ROOT,
            stage_environment(layout),
            work / "logs",
            layout.out / report.LOG_NAME,
            deadline=started + total - 5.0,
        )
        runner.run_all(stages, after_each=lambda result: (record.stages.append(result), report.write(record)))
        record.complete = True
    finally:
        document = report.write(record)  # before the scratch folder goes: the bench reports are read from it
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write(report.summary(document, layout.out / report.MARKDOWN_NAME))
    return 0 if all(s["status"] in ("ok", "skipped") for s in document["stages"]) else 1


def _names(stages: str | None) -> list[str] | None:
    return [s.strip() for s in stages.split(",") if s.strip()] if stages else None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
