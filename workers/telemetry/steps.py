"""`engine.step` spans: a sampled fraction of steps, linked both ways to the traced requests they served.

A step serves many requests and a span has one parent, so a step is a root span with a link to each traced
request's span, and each of those gets a link back (the OpenTelemetry advice for batches). An unsampled step costs
one random number. A traced step records the phase times through the engine's probe (`schedule`, `forward`: input
preparation, the model and sampling, `emit`: finishes and deltas) and, on a GPU, its GPU time with CUDA events.

Kernel capture profiles one whole step (`workers.telemetry.kernels`) and adds a `kernels` child span with the
summary, and optionally spans for the K longest kernels or operators with their exact times. It happens for a step
that serves a request that asked for it (`Submit.capture_kernels`, mode "request"), or for any step (mode
"always"), at most once per `kernel_capture_interval` seconds.
"""

from __future__ import annotations

import random
import time
from typing import Any

from opentelemetry import trace

from workers.protocol import StepOutput, Submit, TelemetryConfig
from workers.telemetry import kernels, names
from workers.telemetry.probe import NULL_PROBE, StepProbe
from workers.telemetry.requests import RequestSpans, links_for

NUM_TOP_KERNELS = 5


class _RecordingProbe(StepProbe):
    __slots__ = ("batch", "executed_ns", "returned_ns", "scheduled_ns")

    def __init__(self) -> None:
        self.batch: Any = None
        self.scheduled_ns = 0
        self.executed_ns = 0
        self.returned_ns = 0

    def scheduled(self, batch: Any) -> None:
        self.batch = batch
        self.scheduled_ns = time.time_ns()

    def executed(self) -> None:
        self.executed_ns = time.time_ns()


class StepTracer:
    """Decides which steps to trace or profile and writes their spans. Worker loop thread only."""

    def __init__(
        self, tracer: trace.Tracer, requests: RequestSpans, config: TelemetryConfig, worker_id: int
    ) -> None:
        self._tracer = tracer
        self._requests = requests
        self._config = config
        self._worker_id = worker_id
        self._random = random.Random()
        self._capture_for: set[str] = set()  # requests that asked for kernel capture and have not had it
        self._last_capture = -float("inf")

    def on_submit(self, submit: Submit) -> None:
        if submit.capture_kernels and self._config.kernel_capture != "off":
            self._capture_for.add(submit.request_id)

    def run(self, engine: Any) -> StepOutput:
        """Run one engine step, traced and perhaps profiled, or plain."""
        capture = self._should_capture(engine)
        if not capture and self._random.random() >= self._config.step_sample_ratio:
            return engine.step()
        return self._traced_step(engine, capture)

    def _should_capture(self, engine: Any) -> bool:
        mode = self._config.kernel_capture
        if mode == "off" or time.monotonic() - self._last_capture < self._config.kernel_capture_interval:
            return False
        if mode == "always":
            return engine.has_work()
        if not self._capture_for:
            return False
        requests = engine.scheduler.requests
        self._capture_for &= requests.keys()  # forget the ones that finished without a capture
        # Profile a step that certainly serves the request: one after it was admitted to the running batch.
        return any(requests[request_id].first_scheduled_time is not None for request_id in self._capture_for)

    def _traced_step(self, engine: Any, capture: bool) -> StepOutput:
        device = engine.runner.device
        gpu_timer = _GpuTimer() if getattr(device, "type", "cpu") == "cuda" else None
        probe = _RecordingProbe()
        engine.probe = probe
        start_ns = time.time_ns()
        events: list[kernels.ProfiledEvent] = []

        def step() -> StepOutput:
            output = engine.step()
            probe.returned_ns = time.time_ns()  # before the profiler, if any, stops and collects
            return output

        try:
            if gpu_timer is not None:
                gpu_timer.start()
            if capture:
                output, events = kernels.profile(step, use_cuda=gpu_timer is not None)
            else:
                output = step()
            gpu_ms = gpu_timer.stop() if gpu_timer is not None else None
        finally:
            engine.probe = NULL_PROBE
        end_ns = time.time_ns()
        served = _served_request_ids(probe.batch)
        span = self._tracer.start_span(
            names.ENGINE_STEP,
            context=trace.set_span_in_context(trace.INVALID_SPAN),  # a root, whatever is current
            start_time=start_ns,
            links=links_for(self._requests, served),
            attributes=_step_attributes(probe.batch, output, self._worker_id, gpu_ms),
        )
        parent = trace.set_span_in_context(span)
        scheduled_ns = probe.scheduled_ns or start_ns
        executed_ns = probe.executed_ns or scheduled_ns
        self._phase(names.SCHEDULE, parent, start_ns, scheduled_ns)
        self._phase(names.FORWARD, parent, scheduled_ns, executed_ns)
        self._phase(names.EMIT, parent, executed_ns, probe.returned_ns or end_ns)
        if capture:
            self._last_capture = time.monotonic()
            self._capture_for.difference_update(served)
            self._kernels_span(parent, kernels.summarize(events, NUM_TOP_KERNELS), start_ns, end_ns)
        span.end(end_time=end_ns)
        self._requests.link_step(served, span.get_span_context())
        return output

    def _phase(self, name: str, parent: Any, start_ns: int, end_ns: int) -> None:
        self._tracer.start_span(name, context=parent, start_time=start_ns).end(end_time=max(start_ns, end_ns))

    def _kernels_span(self, parent: Any, summary: kernels.KernelSummary, start_ns: int, end_ns: int) -> None:
        entries = summary.entries
        first = min((e.start_ns for e in entries), default=start_ns)
        last = max((e.end_ns for e in entries), default=end_ns)
        attributes: dict[str, Any] = {
            names.KERNELS_DEVICE: summary.device,
            names.KERNELS_COUNT: summary.count,
            names.KERNELS_BUSY: summary.busy_ns / 1e6,
            names.KERNELS_TOP: [f"{name} x{count} {total / 1e3:.1f}us" for name, count, total in summary.top],
            names.KERNELS_GRAPH_LAUNCHES: summary.graph_launches,
        }
        if summary.launch_p50_ns is not None and summary.launch_p99_ns is not None:
            attributes[names.KERNELS_LAUNCH_P50] = summary.launch_p50_ns / 1e3
            attributes[names.KERNELS_LAUNCH_P99] = summary.launch_p99_ns / 1e3
        span = self._tracer.start_span(names.KERNELS, context=parent, start_time=first, attributes=attributes)
        kernel_parent = trace.set_span_in_context(span)
        for entry in entries[: self._config.kernel_capture_top_k]:
            entry_attributes: dict[str, Any] = {names.KERNEL_DURATION: entry.duration_ns / 1e3}
            launched = summary.launch_start_ns.get(entry.correlation_id) if entry.kind == kernels.KERNEL else None
            if launched is not None:
                entry_attributes[names.KERNEL_LAUNCH_LATENCY] = (entry.start_ns - launched) / 1e3
            child = self._tracer.start_span(
                kernels.short_name(entry.name), context=kernel_parent, start_time=entry.start_ns,
                attributes=entry_attributes,
            )  # fmt: skip
            child.end(end_time=entry.end_ns)
        span.end(end_time=max(first, last))


class _GpuTimer:
    """The step's GPU time from two CUDA events; read after the step, whose own host sync already drained it."""

    def __init__(self) -> None:
        import torch

        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self._start.record()

    def stop(self) -> float:
        self._end.record()
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))


def _served_request_ids(batch: Any) -> list[str]:
    if batch is None:
        return []
    seqs = [*batch.decodes, *(chunk.seq for chunk in batch.prefills), *batch.retired]
    return list(dict.fromkeys(seq.request_id for seq in seqs))


def _step_attributes(batch: Any, output: StepOutput, worker_id: int, gpu_ms: float | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        names.WORKER_ID: worker_id,
        names.STEP_RUNNING: output.num_running,
        names.STEP_WAITING: output.num_waiting,
        names.KV_CACHE_USAGE: output.kv_cache_usage,
    }
    if batch is not None:
        attributes[names.STEP_BATCH_SIZE] = len(batch.decodes) + len(batch.prefills)
        attributes[names.STEP_DECODE_TOKENS] = len(batch.decodes)
        attributes[names.STEP_PREFILL_TOKENS] = sum(len(chunk.token_ids) for chunk in batch.prefills)
        attributes[names.STEP_RETIRED] = len(batch.retired)
    if gpu_ms is not None:
        attributes[names.STEP_GPU_TIME] = gpu_ms
    return attributes
