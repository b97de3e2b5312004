"""The run's report: one JSON document (the record) and a markdown rendering of it.

JSON schema (`"schema": "autoglm-bench/1"`): `kind` (cpu | gpu), `created` (UTC, ISO 8601), `machine`
(`bench.machine`), `model` (the checkpoint's shape), `workload` (`bench.workload.Workload`), `service_settings`,
`results` (one `LevelResult` per system and level), `comparison` (service against engine per level: throughput
ratio, TTFT p50 and ITL p50 added, wall time added per token; the engine against serial `generate()`),
`targets` (GPU runs: issue 4's goals, met or not) and `skipped` (system, level, reason).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stats import LevelResult

SCHEMA = "autoglm-bench/1"
_PERCENTILE_KEYS = ("p50", "p90", "p99")
SYSTEM_ORDER = (
    "hf_generate",
    "hf_static_batch",
    "hf_continuous_batching",
    "hf_static_cache",
    "hf_cuda_graph",
    "engine",
    "service",
    "service_http",
    "grpc_floor",
    "hf_serve",
)


def build_report(
    *,
    kind: str,
    machine: dict[str, Any],
    model: dict[str, Any],
    workload: dict[str, Any],
    service_settings: dict[str, Any],
    results: Iterable[LevelResult],
    skipped: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    results = sorted(results, key=lambda r: (_system_rank(r.system), r.concurrency))
    report = {
        "schema": SCHEMA,
        "kind": kind,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "model": model,
        "workload": workload,
        "service_settings": service_settings,
        "results": [r.to_dict() for r in results],
        "comparison": compare(results),
        "targets": evaluate_targets(results, model.get("quantization", "none")) if kind == "gpu" else [],
        "skipped": list(skipped),
    }
    return report


def compare(results: list[LevelResult]) -> list[dict[str, Any]]:
    """Per level with both an engine and a service result: what the gateway, pipe and worker add."""
    by_key = {(r.system, r.concurrency): r for r in results}
    serial = by_key.get(("hf_generate", 1))
    rows = []
    for level in sorted({r.concurrency for r in results}):
        engine, service = by_key.get(("engine", level)), by_key.get(("service", level))
        row: dict[str, Any] = {"concurrency": level}
        if engine is not None and serial is not None:
            row["engine_vs_hf_generate"] = engine.throughput_tok_s / serial.throughput_tok_s
        if engine is not None and service is not None:
            row |= {
                "engine_tok_s": engine.throughput_tok_s,
                "service_tok_s": service.throughput_tok_s,
                "service_vs_engine": service.throughput_tok_s / engine.throughput_tok_s,
                "ttft_p50_added_ms": _delta_ms(service.ttft_s["p50"], engine.ttft_s["p50"]),
                "itl_p50_added_ms": _delta_ms(service.itl_s["p50"], engine.itl_s["p50"]),
                "wall_per_token_added_ms": 1000 * (1 / service.throughput_tok_s - 1 / engine.throughput_tok_s),
            }
        if len(row) > 1:
            rows.append(row)
    return rows


def evaluate_targets(results: list[LevelResult], quantization: str) -> list[dict[str, Any]]:
    """Issue 4's goals for this run's precision, with the measured value (None when the level was not run)."""
    by_key = {(r.system, r.concurrency): r for r in results}
    one, many = by_key.get(("engine", 1)), by_key.get(("engine", 256))
    service_many = by_key.get(("service", 256))
    service_1 = by_key.get(("service", 1))
    nf4 = quantization == "nf4"
    goals: list[tuple[str, float | None, str, float]] = [
        ("engine one at a time, tok/s", one and one.throughput_tok_s, ">=", 150.0),
        ("engine 256 concurrent, tok/s", many and many.throughput_tok_s, ">=", 5000.0 if nf4 else 10000.0),
    ]
    if not nf4:
        goals.append(("engine 256 concurrent, TTFT p99 s", many and many.ttft_s["p99"], "<", 2.0))
    ratio = service_many.throughput_tok_s / many.throughput_tok_s if service_many and many else None
    goals.append(("service / engine throughput at 256", ratio, ">=", 0.9))
    for name, service, engine in (("1", service_1, one), ("256", service_many, many)):
        added = _delta_ms(service.ttft_s["p50"], engine.ttft_s["p50"]) if service and engine else None
        goals.append((f"TTFT p50 added by the service at {name}, ms", added, "<=", 2.0))
    return [
        {"goal": name, "value": value, "target": f"{op} {bound:g}", "met": _meets(value, op, bound)}
        for name, value, op, bound in goals
    ]


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from runs of the same workload that measured different systems (a GPU run split in parts).

    Machine, model, workload and settings come from the first; a (system, level) measured twice keeps the later.
    """
    first = reports[0]
    for other in reports[1:]:
        for key in ("kind", "workload"):
            if other[key] != first[key]:
                raise ValueError(f"cannot merge runs with different {key}: {first[key]!r} and {other[key]!r}")
    results = {
        (r["system"], r["concurrency"]): LevelResult.from_dict(r) for rep in reports for r in rep["results"]
    }
    measured = {(s, c) for s, c in results}
    skipped = [s for rep in reports for s in rep["skipped"] if (s["system"], s.get("concurrency")) not in measured]
    return build_report(
        kind=first["kind"],
        machine=first["machine"],
        model=first["model"],
        workload=first["workload"],
        service_settings=first["service_settings"],
        results=results.values(),
        skipped=skipped,
    )


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write `bench.json` and `bench.md` into `out_dir` (created); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path


def render_markdown(report: dict[str, Any]) -> str:
    results = [LevelResult.from_dict(r) for r in report["results"]]
    levels = sorted({r.concurrency for r in results})
    machine, workload, model = report["machine"], report["workload"], report["model"]
    device = machine.get("gpu") or f"{machine.get('cpu')} ({machine.get('cpu_count')} cores)"
    lines = [
        f"# autoglm-rpc benchmark ({report['kind']})",
        "",
        f"- Machine: {device}; torch {machine.get('torch')}, transformers {machine.get('transformers')}; "
        f"commit {(machine.get('git_commit') or '?')[:12]}{' (dirty)' if machine.get('git_dirty') else ''}; "
        f"{report['created']}",
        f"- Model: {model.get('name')}, {model.get('num_hidden_layers')} layers, "
        f"hidden {model.get('hidden_size')}, vocab {model.get('vocab_size')}; {model.get('dtype')}, "
        f"quantization {model.get('quantization', 'none')}",
        f"- Workload: random prompts of {workload['prompt_len']} tokens, {workload['new_tokens']} new tokens each "
        f"(greedy, EOS ignored); at concurrency C, max(C, {workload['min_requests']}) requests rounded up to "
        f"whole waves of C",
        *_hf_serve_lines(results),
        "",
        "## Throughput (output tokens/s)",
        "",
        "| system | " + " | ".join(f"C={level}" for level in levels) + " |",
        "|---|" + "---:|" * len(levels),
    ]
    by_key = {(r.system, r.concurrency): r for r in results}
    for system in _systems(results):
        cells = [_num(by_key[(system, lv)].throughput_tok_s) if (system, lv) in by_key else "—" for lv in levels]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Latency (ms)",
        "",
        "| system | C | requests | tokens | tok/s | TTFT p50 | TTFT p90 | TTFT p99 "
        "| ITL p50 | ITL p90 | ITL p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        latencies = [_ms(r.ttft_s[p]) for p in _PERCENTILE_KEYS] + [_ms(r.itl_s[p]) for p in _PERCENTILE_KEYS]
        counts = f"{r.concurrency} | {r.num_requests} | {r.output_tokens} | {_num(r.throughput_tok_s)}"
        lines.append(f"| {r.system} | {counts} | " + " | ".join(latencies) + " |")
    lines += _gateway_cpu_lines(results, levels)
    lines += _process_cpu_lines(results)
    lines += _comparison_lines(report["comparison"])
    lines += _target_lines(report["targets"])
    if report["skipped"]:
        lines += ["", "## Not run", ""]
        lines += [f"- {s['system']} (C={s.get('concurrency') or '—'}): {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def _hf_serve_lines(results: list[LevelResult]) -> list[str]:
    """How `transformers serve` ran the same workload (its API takes text prompts and has no ignore_eos)."""
    note = next((r.note for r in results if r.system == "hf_serve"), None)
    return [f"- hf_serve: {note}"] if note else []


def _gateway_cpu_lines(results: list[LevelResult], levels: list[int]) -> list[str]:
    """The gateway process's CPU time per output token, per protocol and level (its own counters)."""
    measured = [r for r in results if r.gateway_cpu_us_per_token is not None]
    if not measured:
        return []
    by_key = {(r.system, r.concurrency): r.gateway_cpu_us_per_token for r in measured}
    lines = [
        "",
        "## Gateway CPU per output token (µs; user + system time of the gateway process, all its threads)",
        "",
        "`grpc_floor` is a bare grpc.aio server stepping at the engine's pace: the transport's own cost.",
        "",
        "| system | " + " | ".join(f"C={level}" for level in levels) + " |",
        "|---|" + "---:|" * len(levels),
    ]
    for system in _systems(measured):
        cells = [f"{by_key[(system, lv)]:.0f}" if (system, lv) in by_key else "—" for lv in levels]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return lines


def _process_cpu_lines(results: list[LevelResult]) -> list[str]:
    """Every process of a served level, per output token, and the cores they kept busy together: on a small
    machine the client and the workers compete with the gateway for the same cores."""
    measured = [r for r in results if r.gateway_cpu_us_per_token is not None and r.client_cpu_us_per_token]
    if not measured:
        return []
    lines = [
        "",
        "## CPU per output token by process (µs), and the cores the level kept busy",
        "",
        "| system | C | gateway | workers | clients | all | cores busy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in measured:
        parts = [r.gateway_cpu_us_per_token, r.worker_cpu_us_per_token, r.client_cpu_us_per_token]
        total = sum(part or 0.0 for part in parts)
        cells = [f"{part:.0f}" if part is not None else "—" for part in parts]
        cores = total * r.throughput_tok_s / 1e6
        lines.append(f"| {r.system} | {r.concurrency} | " + " | ".join(cells) + f" | {total:.0f} | {cores:.2f} |")
    return lines


def _comparison_lines(comparison: list[dict[str, Any]]) -> list[str]:
    rows = [row for row in comparison if "service_tok_s" in row]
    if not rows:
        return []
    lines = [
        "",
        "## The service against the engine in process",
        "",
        "| C | engine tok/s | service tok/s | service / engine | TTFT p50 added (ms) | ITL p50 added (ms) "
        "| wall per token added (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['concurrency']} | {_num(row['engine_tok_s'])} | {_num(row['service_tok_s'])} | "
            f"{row['service_vs_engine']:.2f} | {_signed(row['ttft_p50_added_ms'])} | "
            f"{_signed(row['itl_p50_added_ms'])} | {_signed(row['wall_per_token_added_ms'])} |"
        )
    return lines


def _target_lines(targets: list[dict[str, Any]]) -> list[str]:
    if not targets:
        return []
    lines = ["", "## Issue 4 targets", "", "| goal | measured | target | met |", "|---|---:|---|---|"]
    for t in targets:
        value = "—" if t["value"] is None else f"{t['value']:.3g}"
        met = {True: "yes", False: "**no**", None: "not run"}[t["met"]]
        lines.append(f"| {t['goal']} | {value} | {t['target']} | {met} |")
    return lines


def _systems(results: list[LevelResult]) -> list[str]:
    return sorted({r.system for r in results}, key=_system_rank)


def _system_rank(system: str) -> int:
    return SYSTEM_ORDER.index(system) if system in SYSTEM_ORDER else len(SYSTEM_ORDER)


def _meets(value: float | None, op: str, bound: float) -> bool | None:
    if value is None:
        return None
    return {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]


def _delta_ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else 1000 * (a - b)


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{1000 * seconds:.1f}"


def _signed(ms: float | None) -> str:
    return "—" if ms is None else f"{ms:+.2f}"
