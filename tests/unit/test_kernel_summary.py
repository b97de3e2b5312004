"""The kernel summary of a profiled step, from profiler events (no torch needed: the events are built here)."""

from __future__ import annotations

from workers.telemetry.kernels import ProfiledEvent, summarize


def _kernel(name: str, start: int, end: int, correlation: int) -> ProfiledEvent:
    return ProfiledEvent(name, "kernel", start, end, correlation)


def _launch(name: str, start: int, correlation: int) -> ProfiledEvent:
    return ProfiledEvent(name, "cuda_runtime", start, start + 5, correlation)


def test_cuda_kernels_busy_time_top_and_launch_latency() -> None:
    events = [
        _launch("cudaLaunchKernel", 0, 1),
        _launch("cudaLaunchKernel", 10, 2),
        _launch("cudaGraphLaunch", 20, 3),
        _launch("cudaMemcpyAsync", 25, 9),  # not a launch
        _kernel("gemm", 100, 200, 1),
        _kernel("gemm", 150, 260, 2),  # overlaps the first (another stream): counted once in the busy time
        _kernel("rmsnorm", 300, 310, 3),  # from the graph launch
        _kernel("rmsnorm", 320, 330, 3),
        ProfiledEvent("aten::mm", "cpu_op", 0, 50, 1),
    ]
    summary = summarize(events, num_top=1)
    assert summary.device == "cuda"
    assert summary.count == 4
    assert summary.busy_ns == (260 - 100) + 10 + 10
    assert summary.top == (("gemm", 2, 100 + 110),)
    assert summary.entries[0].duration_ns == 110  # longest first
    assert summary.launch_start_ns == {1: 0, 2: 10, 3: 20}
    # Per launch, to its first kernel: the graph's two kernels share its correlation id and count once.
    assert (summary.launch_p50_ns, summary.launch_p99_ns) == (140, 280)
    assert summary.graph_launches == 1


def test_cpu_summary_counts_top_level_operators_only() -> None:
    events = [
        ProfiledEvent("aten::linear", "cpu_op", 0, 100, 1, thread=1),
        ProfiledEvent("aten::addmm", "cpu_op", 10, 90, 2, thread=1),  # inside linear
        ProfiledEvent("aten::relu", "cpu_op", 120, 130, 3, thread=1),
        ProfiledEvent("aten::add", "cpu_op", 50, 60, 4, thread=2),  # another thread: top level there
    ]
    summary = summarize(events)
    assert summary.device == "cpu"
    assert sorted(e.name for e in summary.entries) == ["aten::add", "aten::linear", "aten::relu"]
    assert summary.busy_ns == 100 + 10
    assert summary.launch_p50_ns is None and summary.graph_launches == 0


def test_an_empty_profile() -> None:
    summary = summarize([])
    assert (summary.count, summary.busy_ns, summary.top, summary.launch_p99_ns) == (0, 0, (), None)
