"""The check's results folder: `gpu-check.json` (the record), `gpu-check.md` (its tables) and `gpu-check.log`.

Three files only: the device machine brings back at most 8 files from a results folder, two folders deep at
most, so the benchmark reports are embedded in the JSON and their tables in the markdown, and every stage's output
(with the servers' logs) is appended to the one log. Both documents are rewritten after every stage, so a run
cut short still leaves what it measured.

The driver imports this module, so it stays free of torch (bench.report is plain Python).

JSON (`"schema": "autoglm-gpu-check/1"`): `mode` (gpu | rehearsal), `started`, `elapsed_s`, `total_budget_s`,
`complete`, `levels`, `stages` (`runner.StageResult`s), `environment` (the preflight's facts), `tests` (counts and
failures of the gpu-marked tests), `bench` (per precision, the engine's and the service's bench.json merged into
one, or null), `tracing` (the A/B's result, or null) and `targets` (`targets.evaluate` rows).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report as bench_report
from tools.gpu_check import targets
from tools.gpu_check.plan import PARTS, PRECISIONS, Layout, Levels
from tools.gpu_check.runner import StageResult

SCHEMA = "autoglm-gpu-check/1"
JSON_NAME, MARKDOWN_NAME, LOG_NAME = "gpu-check.json", "gpu-check.md", "gpu-check.log"
_TEST_LINE = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.MULTILINE)


@dataclass
class Record:
    """What a check knows so far; `to_dict` reads the stages' outputs from the work folder each time."""

    layout: Layout
    rehearsal: bool
    levels: Levels
    total_budget_s: float
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    stages: list[StageResult] = field(default_factory=list)
    complete: bool = False

    def to_dict(self) -> dict[str, Any]:
        status = {s.name: s for s in self.stages}
        bench = {precision: self._bench_report(precision) for precision in PRECISIONS}
        tracing = _last_json_line(status.get("tracing"))
        sources = {**bench, "tracing": tracing}
        missing = {p: _why_missing([status.get(f"bench-{p}-{part}") for part in PARTS]) for p in PRECISIONS}
        missing["tracing"] = _why_missing([status.get("tracing")])
        return {
            "schema": SCHEMA,
            "mode": "rehearsal" if self.rehearsal else "gpu",
            "started": self.started.isoformat(timespec="seconds"),
            "elapsed_s": round((datetime.now(UTC) - self.started).total_seconds(), 1),
            "total_budget_s": self.total_budget_s,
            "complete": self.complete,
            "levels": {
                "concurrency": list(self.levels.concurrency),
                "prompt_len": self.levels.prompt_len,
                "new_tokens": self.levels.new_tokens,
            },
            "stages": [s.to_dict() for s in self.stages],
            "environment": _read_json(self.layout.preflight_json),
            "tests": gpu_test_outcomes(status.get("gpu-tests")),
            "bench": bench,
            "tracing": tracing,
            "targets": targets.evaluate(sources, missing, self.levels.high),
        }

    def _bench_report(self, precision: str) -> dict[str, Any] | None:
        """The precision's engine and service reports as one (`bench.report.merge_reports`), or what there is."""
        parts = [_read_json(self.layout.bench_out(precision, part) / "bench.json") for part in PARTS]
        reports = [part for part in parts if part is not None]
        return bench_report.merge_reports(reports) if reports else None


def write(record: Record) -> dict[str, Any]:
    """Write the JSON and the markdown into the results folder; returns the JSON document."""
    document = record.to_dict()
    out = record.layout.out
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(document, indent=2) + "\n")
    (out / MARKDOWN_NAME).write_text(render_markdown(document))
    return document


def summary(document: dict[str, Any], markdown_path: Path) -> str:
    """The markdown without the benchmark tables, which a terminal (or the last lines of a remote command's
    output) has less room for; they are in `markdown_path`."""
    text = render_markdown(document)
    cut = text.find("\n## Benchmark")
    return text if cut < 0 else f"{text[:cut].rstrip()}\n\nThe benchmark tables: {markdown_path}\n"


def gpu_test_outcomes(stage: StageResult | None) -> dict[str, Any] | None:
    """Counts by outcome and the tests that failed, read from pytest's verbose output (a cut-off one too)."""
    if stage is None or not stage.log or not Path(stage.log).is_file():
        return None
    outcomes = dict(_TEST_LINE.findall(Path(stage.log).read_text(errors="replace")))
    counts = Counter(outcomes.values())
    return {
        "counts": dict(sorted(counts.items())),
        "failed": sorted(t for t, outcome in outcomes.items() if outcome in ("FAILED", "ERROR")),
        "complete": stage.status in ("ok", "failed"),
    }


def render_markdown(document: dict[str, Any]) -> str:
    rehearsal = document["mode"] == "rehearsal"
    title = "GPU check: REHEARSAL on the CPU" if rehearsal else "GPU check"
    lines = [f"# {title}", ""]
    if rehearsal:
        lines += [
            "A rehearsal: the demo model on the CPU at tiny settings, in float32 (its bf16 and nf4 stages are "
            "two float32 runs). It checks the plumbing (stages, budgets, results); its figures say nothing "
            "about the targets.",
            "",
        ]
    lines += [
        *_environment_lines(document),
        "",
        "## Stages",
        "",
        "| stage | status | seconds | budget (s) | note |",
        "|---|---|---:|---:|---|",
    ]
    for stage in document["stages"]:
        note = stage["note"].replace("|", "\\|")
        lines.append(
            f"| {stage['name']} | {stage['status']} | {stage['seconds']:.1f} | {stage['budget_s']:.0f} | {note} |"
        )
    lines += ["", "## Targets, this run and the anchors", ""]
    lines += targets.markdown_table(document["targets"], rehearsal)
    lines += ["", *_test_lines(document["tests"]), *_tracing_lines(document["tracing"])]
    for precision, bench in document["bench"].items():
        if bench is not None:
            lines += ["", f"## Benchmark, {precision}", "", *_demote(bench_report.render_markdown(bench))]
    return "\n".join(lines).rstrip() + "\n"


def _environment_lines(document: dict[str, Any]) -> list[str]:
    env = document["environment"] or {}
    versions = env.get("versions", {})
    machine = env.get("gpu") or ("no CUDA device" if env else "unknown (the preflight did not finish)")
    finished = "complete" if document["complete"] else "in progress or cut short"
    return [
        f"- Machine: {machine}; Python {env.get('python', '?')}, torch {versions.get('torch', '?')} "
        f"(CUDA {env.get('torch_cuda') or '—'}), transformers {versions.get('transformers', '?')}, "
        f"bitsandbytes {versions.get('bitsandbytes') or '—'}",
        f"- Started {document['started']}; {document['elapsed_s']:.0f} s of a {document['total_budget_s']:.0f} s "
        f"budget ({finished})",
        f"- Workload: prompt {document['levels']['prompt_len']} tokens, {document['levels']['new_tokens']} new "
        f"tokens, concurrency {', '.join(map(str, document['levels']['concurrency']))}",
    ]


def _test_lines(tests: dict[str, Any] | None) -> list[str]:
    if tests is None:
        return ["## Tests (gpu marker)", "", "Not run.", ""]
    counts = ", ".join(f"{n} {outcome.lower()}" for outcome, n in tests["counts"].items()) or "none ran"
    lines = ["## Tests (gpu marker)", "", f"{counts}{'' if tests['complete'] else ' (cut short)'}."]
    lines += [f"- failed: `{name}`" for name in tests["failed"]]
    return [*lines, ""]


def _tracing_lines(tracing: dict[str, Any] | None) -> list[str]:
    if tracing is None:
        return ["## Tracing A/B", "", "No result."]
    return [
        "## Tracing A/B",
        "",
        f"{tracing['rounds']} alternating rounds per arm, {tracing['requests_per_round']} requests x "
        f"{tracing['max_new_tokens']} tokens at concurrency {tracing['concurrency']}, sampling "
        f"{tracing['sample_ratio']}: throughput {tracing['throughput_off_tok_s']} tok/s off, "
        f"{tracing['throughput_on_tok_s']} on ({tracing['throughput_change_pct']:+.2f} %); TTFT p50 "
        f"{tracing['ttft_p50_off_ms']} ms off, {tracing['ttft_p50_on_ms']} on; "
        f"{tracing['spans_exported']} spans exported.",
    ]


def _demote(markdown: str) -> list[str]:
    """A bench.md under this document's headings: its title dropped, its sections one level down."""
    lines = markdown.splitlines()
    body = lines[1:] if lines and lines[0].startswith("# ") else lines
    while body and not body[0].strip():
        body = body[1:]
    return [f"#{line}" if line.startswith("## ") else line for line in body]


def _why_missing(stages: list[StageResult | None]) -> str:
    """Why a source's figures may be missing: the stages behind it that did not end ok."""
    if any(stage is None for stage in stages):
        return "not run"
    failed = [f"{stage.name} {stage.status}" for stage in stages if stage is not None and stage.status != "ok"]
    return f"not measured ({', '.join(failed)})" if failed else "not in the report"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_json_line(stage: StageResult | None) -> dict[str, Any] | None:
    """The last line of a stage's output that is a JSON object (how the tracing A/B prints its result)."""
    if stage is None or not stage.log or not Path(stage.log).is_file():
        return None
    for line in reversed(Path(stage.log).read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None
