"""Engine-step spans in one process, to an in-memory exporter: sampling, links both ways, capture rate limit."""

from __future__ import annotations

from dataclasses import replace

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.workers.factories import make_submit
from workers.protocol import TelemetryConfig
from workers.telemetry.requests import RequestSpans
from workers.telemetry.steps import StepTracer


def _tracing(config: TelemetryConfig) -> tuple[InMemorySpanExporter, RequestSpans, StepTracer, trace.Tracer]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    requests = RequestSpans(tracer, worker_id=0)
    return exporter, requests, StepTracer(tracer, requests, config, worker_id=0), tracer


def _carrier(tracer: trace.Tracer) -> dict[str, str]:
    carrier: dict[str, str] = {}
    with tracer.start_as_current_span("caller"):
        propagate.inject(carrier)
    return carrier


def _run(engine, requests: RequestSpans, steps: StepTracer, submits: list) -> None:
    for submit in submits:
        requests.start(submit)
        steps.on_submit(submit)
        engine.add(submit)
    while engine.has_work():
        requests.on_output(steps.run(engine))


def test_always_capture_is_rate_limited_and_steps_link_both_ways(make_engine) -> None:
    engine = make_engine("glm")
    config = TelemetryConfig(
        step_sample_ratio=0.0, kernel_capture="always", kernel_capture_interval=3600.0, kernel_capture_top_k=2
    )
    exporter, requests, steps, tracer = _tracing(config)
    traced = make_submit("a", (5, 6, 7), max_new_tokens=4)
    traced = type(traced)(
        **{**{f: getattr(traced, f) for f in traced.__slots__}, "trace_carrier": _carrier(tracer)}
    )
    _run(engine, requests, steps, [traced, make_submit("b", (8, 9), max_new_tokens=4)])

    spans = exporter.get_finished_spans()
    step_spans = [s for s in spans if s.name == "engine.step"]
    assert len(step_spans) == 1, "sampling 0 with a one-hour capture interval: only the first step is traced"
    (kernels,) = [s for s in spans if s.name == "kernels"]
    assert kernels.parent.span_id == step_spans[0].context.span_id
    assert len([s for s in spans if s.parent is not None and s.parent.span_id == kernels.context.span_id]) == 2
    (request,) = [s for s in spans if s.name == "request"]
    assert [link.context.span_id for link in step_spans[0].links] == [request.context.span_id]
    assert [link.context.span_id for link in request.links] == [step_spans[0].context.span_id]


def test_unsampled_and_untraced_requests_get_no_span(make_engine) -> None:
    engine = make_engine("glm")
    exporter, requests, steps, _ = _tracing(TelemetryConfig(step_sample_ratio=0.0, kernel_capture="off"))
    unsampled = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-00"}
    first = replace(make_submit("a", (5, 6), max_new_tokens=2), trace_carrier=unsampled)
    _run(engine, requests, steps, [first, make_submit("b", (5, 6), max_new_tokens=2)])
    assert exporter.get_finished_spans() == ()


def test_a_request_given_back_unstarted_ends_its_span_saying_so() -> None:
    exporter, requests, _, tracer = _tracing(TelemetryConfig(step_sample_ratio=0.0, kernel_capture="off"))
    requests.start(replace(make_submit("moved", (5, 6), max_new_tokens=2), trace_carrier=_carrier(tracer)))
    requests.close(("moved", "unknown"), "moved to another worker before it started")
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "request"]
    assert [event.name for event in span.events] == ["moved to another worker before it started"]
    requests.close_all("worker stopped")  # nothing left open: no second end
    assert len([s for s in exporter.get_finished_spans() if s.name == "request"]) == 1
