"""The PNG: throughput against concurrency, and TTFT and inter-token latency percentiles, one line per system.

matplotlib is optional (the `bench` extra): `write_plot` returns None when it is missing, and
`python -m bench plot RUN/bench.json` renders the PNG later from the JSON alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bench.report import SYSTEM_ORDER
from bench.stats import LevelResult

logger = logging.getLogger(__name__)


def write_plot(report: dict[str, Any], path: Path) -> Path | None:
    """Render the report's results to `path`; None (and nothing written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: write files only
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    results = [LevelResult.from_dict(r) for r in report["results"]]
    systems = sorted({r.system for r in results}, key=lambda s: SYSTEM_ORDER.index(s) if s in SYSTEM_ORDER else 99)
    levels = sorted({r.concurrency for r in results})
    figure, axes = plt.subplots(1, 3, figsize=(17, 5))
    panels = (
        (axes[0], "output tokens/s", lambda r: [(r.throughput_tok_s, "-")]),
        (axes[1], "TTFT (ms): p50 solid, p99 dashed", lambda r: _latency(r.ttft_s)),
        (axes[2], "inter-token latency (ms): p50 solid, p99 dashed", lambda r: _latency(r.itl_s)),
    )
    for axis, title, values in panels:
        for index, system in enumerate(systems):
            rows = sorted((r for r in results if r.system == system), key=lambda r: r.concurrency)
            color = f"C{index}"
            for series in range(len(values(rows[0]))):
                points = [(r.concurrency, values(r)[series]) for r in rows if values(r)[series][0] is not None]
                if not points:
                    continue
                xs, ys = [x for x, _ in points], [y for _, (y, _) in points]
                style = points[0][1][1]
                axis.plot(xs, ys, style, marker="o", color=color, label=system if series == 0 else None)
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.set_yscale("log")
        axis.set_xlabel("concurrent requests")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize="small")
    machine = report["machine"]
    device = machine.get("gpu") or f"{machine.get('cpu')} ({machine.get('cpu_count')} cores)"
    workload = report["workload"]
    figure.suptitle(
        f"autoglm-rpc bench ({report['kind']}): {report['model'].get('name')}, prompt {workload['prompt_len']}, "
        f"{workload['new_tokens']} new tokens; {device}",
        fontsize="medium",
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _latency(percentiles: dict[str, float | None]) -> list[tuple[float | None, str]]:
    return [(_to_ms(percentiles["p50"]), "-"), (_to_ms(percentiles["p99"]), "--")]


def _to_ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds
