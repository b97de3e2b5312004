"""The trace context is built once, at the edge: routing hands the worker that context, not a re-read header.

The edge (the gRPC interceptor or the HTTP middleware) extracts the caller's W3C context and starts its server
span from it; with tracing off that span is the caller's own context. `PoolObserver.routed` serializes whatever
is current into the `Submit`, so the gRPC servicers and HTTP routes never look at trace headers themselves.
"""

from __future__ import annotations

from types import SimpleNamespace

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from autoglm_rpc.telemetry.generation import PoolObserver
from autoglm_rpc.telemetry.metrics import GatewayMetrics
from workers.protocol import SamplingParams, StoppingParams, Submit

CALLER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER = {"traceparent": f"00-{CALLER_TRACE_ID}-b7ad6b7169203331-01", "tracestate": "vendor=abc"}
SUBMIT = Submit(
    request_id="r1", prompt_ids=(1, 2), sampling=SamplingParams(), stopping=StoppingParams(max_new_tokens=2)
)
WORKER = SimpleNamespace(worker_id=3, num_in_flight=0)
POOL = SimpleNamespace(num_ready=1)


def _edge_span(tracer: trace.Tracer, headers: dict[str, str]) -> trace.Span:
    """What the interceptor and the HTTP middleware do with a call's headers."""
    return tracer.start_span("edge", context=propagate.extract(headers), kind=trace.SpanKind.SERVER)


def test_without_tracing_the_worker_gets_the_callers_context() -> None:
    observer = PoolObserver(None, GatewayMetrics("m"), POOL)  # type: ignore[arg-type]
    with trace.use_span(_edge_span(trace.NoOpTracer(), CALLER)):
        routed = observer.routed(SUBMIT, WORKER)  # type: ignore[arg-type]
    assert routed.trace_carrier == CALLER


def test_without_tracing_or_a_caller_context_nothing_is_sent() -> None:
    observer = PoolObserver(None, GatewayMetrics("m"), POOL)  # type: ignore[arg-type]
    with trace.use_span(_edge_span(trace.NoOpTracer(), {})):
        routed = observer.routed(SUBMIT, WORKER)  # type: ignore[arg-type]
    assert routed.trace_carrier == {}


def test_with_tracing_the_worker_continues_from_pipe_send_in_the_callers_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    observer = PoolObserver(tracer, GatewayMetrics("m"), POOL)  # type: ignore[arg-type]
    edge = _edge_span(tracer, CALLER)
    with trace.use_span(edge, end_on_exit=True):
        routed = observer.routed(SUBMIT, WORKER)  # type: ignore[arg-type]
    spans = {span.name: span for span in exporter.get_finished_spans()}
    send = spans["pipe.send worker-3"]
    assert f"{send.context.trace_id:032x}" == CALLER_TRACE_ID
    assert send.parent is not None and send.parent.span_id == edge.get_span_context().span_id
    _, trace_id, span_id, _ = routed.trace_carrier["traceparent"].split("-")
    assert (trace_id, span_id) == (CALLER_TRACE_ID, f"{send.context.span_id:016x}")
