"""Kernel capture: profile one engine step with `torch.profiler` and summarise what ran.

Profiling costs a lot while it runs (tens of ms for the step; about a second the first time, while the
profiler initialises), so `workers.telemetry.steps` does it on demand and rate-limited, never continuously. On a
GPU the summary is over CUDA kernels: how many, the GPU busy time (the union of their intervals), the longest
ones by total time, and the launch→start latency (a kernel's start minus the start of the runtime call that
launched it, joined by CUPTI correlation id; one `cudaGraphLaunch` stands for every kernel of its graph). On a CPU
the same path summarises the top-level CPU operators instead, so it runs and is tested everywhere.

Event times are the profiler's (kineto's) clock: nanoseconds since the Unix epoch, as span timestamps are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

Result = TypeVar("Result")

KERNEL = "kernel"
CPU_OP = "cpu_op"
RUNTIME_KINDS = ("cuda_runtime", "cuda_driver")
LAUNCH_CALLS = frozenset(
    {
        "cudaLaunchKernel",
        "cudaLaunchKernelExC",
        "cudaLaunchCooperativeKernel",
        "cuLaunchKernel",
        "cuLaunchKernelEx",
        "cudaGraphLaunch",
    }
)
GRAPH_LAUNCH = "cudaGraphLaunch"
MAX_NAME = 120  # kernel names are C++ template instantiations; a span name or attribute needs only the start


@dataclass(frozen=True, slots=True)
class ProfiledEvent:
    """One profiler activity. kind: kineto's activity type ("kernel", "cuda_runtime", "cpu_op", ...)."""

    name: str
    kind: str
    start_ns: int
    end_ns: int
    correlation_id: int = 0
    thread: int = 0

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True, slots=True)
class KernelSummary:
    """What one profiled step ran. `entries` are the kernels (or CPU operators), longest first.

    top: (name, count, total ns) of the names with the most total time. launch_start_ns: when the runtime
    call with that correlation id began (CUDA only); the latency percentiles are per launch, to its first
    kernel (a graph launch is one launch, however many kernels it runs).
    """

    device: str
    count: int
    busy_ns: int
    top: tuple[tuple[str, int, int], ...]
    entries: tuple[ProfiledEvent, ...]
    launch_start_ns: dict[int, int]
    launch_p50_ns: int | None
    launch_p99_ns: int | None
    graph_launches: int


def profile(step: Callable[[], Result], use_cuda: bool) -> tuple[Result, list[ProfiledEvent]]:
    """Run `step` under `torch.profiler` (CPU, and CUDA when `use_cuda`) and return its result and the events."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if use_cuda else [])]
    with torch_profile(activities=activities) as profiler:
        result = step()
    events = [
        ProfiledEvent(
            name=event.name(),
            kind=event.activity_type(),
            start_ns=event.start_ns(),
            end_ns=event.end_ns(),
            correlation_id=event.correlation_id(),
            thread=event.start_thread_id(),
        )
        for event in profiler.profiler.kineto_results.events()
    ]
    return result, events


def summarize(events: Iterable[ProfiledEvent], num_top: int = 5) -> KernelSummary:
    """Summarise a profiled step: CUDA kernels when there are any, else the top-level CPU operators."""
    events = list(events)
    kernels = [e for e in events if e.kind == KERNEL]
    device = "cuda" if kernels else "cpu"
    entries = kernels if kernels else _top_level([e for e in events if e.kind == CPU_OP])
    launches = {e.correlation_id: e for e in events if e.kind in RUNTIME_KINDS and e.name in LAUNCH_CALLS}
    first_start: dict[int, int] = {}
    for kernel in kernels:
        if kernel.correlation_id in launches:
            first_start[kernel.correlation_id] = min(
                first_start.get(kernel.correlation_id, kernel.start_ns), kernel.start_ns
            )
    latencies = sorted(start - launches[correlation].start_ns for correlation, start in first_start.items())
    return KernelSummary(
        device=device,
        count=len(entries),
        busy_ns=_union_ns(entries),
        top=_top_names(entries, num_top),
        entries=tuple(sorted(entries, key=lambda e: e.duration_ns, reverse=True)),
        launch_start_ns={correlation: launches[correlation].start_ns for correlation in first_start},
        launch_p50_ns=_percentile(latencies, 0.50),
        launch_p99_ns=_percentile(latencies, 0.99),
        graph_launches=sum(1 for e in launches.values() if e.name == GRAPH_LAUNCH),
    )


def short_name(name: str) -> str:
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


def _top_level(ops: list[ProfiledEvent]) -> list[ProfiledEvent]:
    """The operators not nested inside another operator of the same thread (what Python called)."""
    result = []
    for thread_ops in _by_thread(ops).values():
        end_of_outer = -1
        for op in sorted(thread_ops, key=lambda e: (e.start_ns, -e.end_ns)):
            if op.start_ns >= end_of_outer:
                result.append(op)
                end_of_outer = op.end_ns
    return result


def _by_thread(events: list[ProfiledEvent]) -> dict[int, list[ProfiledEvent]]:
    groups: dict[int, list[ProfiledEvent]] = defaultdict(list)
    for event in events:
        groups[event.thread].append(event)
    return groups


def _union_ns(events: list[ProfiledEvent]) -> int:
    """The time covered by at least one event (overlapping kernels on several streams count once)."""
    total, current_start, current_end = 0, None, None
    for event in sorted(events, key=lambda e: e.start_ns):
        if current_end is None or event.start_ns > current_end:
            if current_end is not None and current_start is not None:
                total += current_end - current_start
            current_start, current_end = event.start_ns, event.end_ns
        else:
            current_end = max(current_end, event.end_ns)
    if current_end is not None and current_start is not None:
        total += current_end - current_start
    return total


def _top_names(entries: list[ProfiledEvent], num_top: int) -> tuple[tuple[str, int, int], ...]:
    counts: dict[str, int] = defaultdict(int)
    totals: dict[str, int] = defaultdict(int)
    for entry in entries:
        counts[entry.name] += 1
        totals[entry.name] += entry.duration_ns
    ranked = sorted(totals, key=lambda name: totals[name], reverse=True)[:num_top]
    return tuple((short_name(name), counts[name], totals[name]) for name in ranked)


def _percentile(sorted_values: list[int], fraction: float) -> int | None:
    """Nearest-rank percentile of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * fraction // 1))  # ceil(n * fraction), at least 1
    return sorted_values[int(rank) - 1]
