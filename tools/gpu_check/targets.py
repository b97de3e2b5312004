"""The performance targets, the plain-transformers anchors, and this run's figures beside them.

Targets (one H200, random-init GLM-4-9B shape, prompt 256, 128 new tokens): the engine in bf16 >= 150 tok/s one
request at a time and >= 10,000 tok/s at 256 concurrent with TTFT p99 < 2 s; in nf4 >= 150 and >= 5,000; the
whole service >= 90 % of the engine's throughput at 256 streams and <= 2 ms added to TTFT p50; tracing at 10 %
sampling costs < 1 % throughput. Anchors, measured earlier with plain transformers on the same kind of H200 in
bf16: 13.2 tok/s (`generate()`, one request), 838 tok/s (transformers' continuous batching at 256) and 2,166
tok/s (the HF model code with a CUDA-graph decode step at 256). The same CUDA-graph baseline also runs in the
check itself (bf16), and its figure stands in its own column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NOT_MEASURED_YET = "not measured yet"

Report = dict[str, Any]  # a bench.json document (`bench.report`)


@dataclass(frozen=True, slots=True)
class Target:
    """One goal. `measure(report, high)` reads the figure from a precision's bench report (or the tracing
    result for `source == "tracing"`); `baseline` reads the HF CUDA-graph figure beside it."""

    source: str  # "bf16", "nf4" (a bench run) or "tracing"
    goal: str  # "{high}" is replaced by the many-streams level
    op: str
    bound: float
    unit: str
    measure: Callable[[Report, int], float | None]
    anchor: str = "—"
    baseline: Callable[[Report, int], float | None] | None = None


def result_value(report: Report, system: str, level: int, key: str, percentile: str = "") -> float | None:
    """A figure of `system` at `level` in a bench report (a latency percentile when `percentile` is given)."""
    for result in report.get("results", []):
        if result["system"] == system and result["concurrency"] == level:
            value = result[key]
            return value.get(percentile) if percentile else value
    return None


def comparison_value(report: Report, level: int, key: str) -> float | None:
    """A service-against-engine figure at `level` (`bench.report.compare`)."""
    for row in report.get("comparison", []):
        if row["concurrency"] == level:
            return row.get(key)
    return None


def _engine_tok_s(level: int | None) -> Callable[[Report, int], float | None]:
    return lambda report, high: result_value(report, "engine", level or high, "throughput_tok_s")


def _graph_tok_s(level: int | None) -> Callable[[Report, int], float | None]:
    return lambda report, high: result_value(report, "hf_cuda_graph", level or high, "throughput_tok_s")


def _tracing_cost(tracing: Report, high: int) -> float | None:
    """Throughput lost with tracing on, in % of tracing off (negative when the traced arm was faster)."""
    change = tracing.get("throughput_change_pct")
    return None if change is None else -change


def _service_targets(precision: str) -> list[Target]:
    return [
        Target(
            precision,
            f"{precision}: service / engine throughput at {{high}} streams",
            ">=",
            0.9,
            "ratio",
            lambda r, high: comparison_value(r, high, "service_vs_engine"),
        ),
        Target(
            precision,
            f"{precision}: TTFT p50 added by the service at 1 stream",
            "<=",
            2.0,
            "ms",
            lambda r, high: comparison_value(r, 1, "ttft_p50_added_ms"),
        ),
        Target(
            precision,
            f"{precision}: TTFT p50 added by the service at {{high}} streams",
            "<=",
            2.0,
            "ms",
            lambda r, high: comparison_value(r, high, "ttft_p50_added_ms"),
        ),
    ]


TARGETS: tuple[Target, ...] = (
    Target(
        "bf16",
        "bf16: engine, 1 request, tok/s",
        ">=",
        150,
        "tok/s",
        _engine_tok_s(1),
        "13.2 tok/s (generate(), one request)",
        _graph_tok_s(1),
    ),
    Target(
        "bf16",
        "bf16: engine, {high} concurrent, tok/s",
        ">=",
        10_000,
        "tok/s",
        _engine_tok_s(None),
        "838 tok/s (continuous batching), 2,166 tok/s (CUDA-graph decode step)",
        _graph_tok_s(None),
    ),
    Target(
        "bf16",
        "bf16: engine, {high} concurrent, TTFT p99",
        "<",
        2.0,
        "s",
        lambda r, high: result_value(r, "engine", high, "ttft_s", "p99"),
    ),
    Target("nf4", "nf4: engine, 1 request, tok/s", ">=", 150, "tok/s", _engine_tok_s(1)),
    Target("nf4", "nf4: engine, {high} concurrent, tok/s", ">=", 5_000, "tok/s", _engine_tok_s(None)),
    *_service_targets("bf16"),
    *_service_targets("nf4"),
    Target("tracing", "tracing at 10 % sampling: throughput cost", "<", 1.0, "%", _tracing_cost),
)


def evaluate(sources: dict[str, Report | None], missing: dict[str, str], high: int) -> list[dict[str, Any]]:
    """One row per target: its figure from `sources` (by source name) or why there is none (`missing`)."""
    rows = []
    for target in TARGETS:
        report = sources.get(target.source)
        value = None if report is None else target.measure(report, high)
        baseline = None if report is None or target.baseline is None else target.baseline(report, high)
        reason = missing.get(target.source, "not in the report") if value is None else ""
        rows.append(
            {
                "goal": target.goal.format(high=high),
                "target": f"{target.op} {target.bound:,g} {'' if target.unit == 'ratio' else target.unit}".strip(),
                "value": value,
                "unit": target.unit,
                "met": None if value is None else _meets(value, target.op, target.bound),
                "not_measured": reason,
                "hf_cuda_graph_this_run": baseline,
                "anchor_h200": target.anchor,
            }
        )
    return rows


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "tok/s":
        return f"{value:,.0f} tok/s" if value >= 100 else f"{value:.1f} tok/s"
    if unit == "ratio":
        return f"{value:.2f}"
    if unit == "%":
        return f"{value:.2f} %"
    return f"{value:.2f} {unit}" if unit == "s" else f"{value:+.2f} {unit}"


def markdown_table(rows: list[dict[str, Any]], rehearsal: bool) -> list[str]:
    """The targets table: goal, target, this run, met, the CUDA-graph baseline of this run, the H200 anchor."""
    lines = [
        "| goal | target | this run | met | HF CUDA graph, this run | plain transformers, H200, bf16 (anchor) |",
        "|---|---|---:|---|---:|---|",
    ]
    for row in rows:
        measured = format_value(row["value"], row["unit"]) if row["value"] is not None else row["not_measured"]
        met = "rehearsal" if rehearsal else {True: "yes", False: "**no**", None: "—"}[row["met"]]
        baseline = format_value(row["hf_cuda_graph_this_run"], "tok/s") if row["hf_cuda_graph_this_run"] else "—"
        lines.append(
            f"| {row['goal']} | {row['target']} | {measured} | {met} | {baseline} | {row['anchor_h200']} |"
        )
    return lines


def _meets(value: float, op: str, bound: float) -> bool:
    return {">=": value >= bound, "<=": value <= bound, "<": value < bound, ">": value > bound}[op]
