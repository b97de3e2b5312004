"""The worker's `request` spans: one per traced request, parented by the W3C carrier that rides in its `Submit`.

A `request` span (CONSUMER) starts when the `Submit` arrives and ends when the request's last delta (or its
`RequestFailed`) leaves the engine. Its children `queue` (arrival → first scheduled), `prefill` (→ first token)
and `decode` (→ last token) are written when it ends, from the engine's own timings in `Finish`. Requests whose
carrier says "not sampled", or that carry none, get no span and cost one dictionary lookup per delta.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode

from workers.protocol import Finish, FinishReason, RequestFailed, StepOutput, Submit
from workers.telemetry import names

# A request decoding for minutes in a busy worker can be served by many traced steps; links past this are dropped
# (the OpenTelemetry SDK caps them at 128 anyway).
MAX_STEP_LINKS = 64


@dataclass(slots=True, eq=False)
class _Live:
    span: Span
    start_ns: int  # epoch ns at arrival
    num_tokens: int = 0
    num_links: int = 0


class RequestSpans:
    """The traced requests in flight in this worker. Called on the worker loop's thread only."""

    def __init__(self, tracer: trace.Tracer, worker_id: int) -> None:
        self._tracer = tracer
        self._worker_id = worker_id
        self._live: dict[str, _Live] = {}

    def start(self, submit: Submit) -> None:
        """Start the request's span if its carrier asks for one (a sampled trace context)."""
        if not submit.trace_carrier:
            return
        parent = propagate.extract(submit.trace_carrier)
        if not trace.get_current_span(parent).get_span_context().trace_flags.sampled:
            return
        start_ns = time.time_ns()
        span = self._tracer.start_span(
            names.REQUEST,
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=start_ns,
            attributes={
                names.REQUEST_ID: submit.request_id,
                names.WORKER_ID: self._worker_id,
                names.GEN_AI_USAGE_INPUT_TOKENS: len(submit.prompt_ids),
                names.GEN_AI_REQUEST_MAX_TOKENS: submit.stopping.max_new_tokens,
            },
        )
        if span.is_recording():
            self._live[submit.request_id] = _Live(span, start_ns)

    def context(self, request_id: str) -> SpanContext | None:
        live = self._live.get(request_id)
        return None if live is None else live.span.get_span_context()

    def link_step(self, request_ids: list[str], step: SpanContext) -> None:
        """Link each traced request that a traced step served back to that step."""
        for request_id in request_ids:
            live = self._live.get(request_id)
            if live is not None and live.num_links < MAX_STEP_LINKS:
                live.span.add_link(step)
                live.num_links += 1

    def on_output(self, output: StepOutput) -> None:
        """Count the step's tokens of traced requests and end the spans of those that finished."""
        if not self._live:
            return
        for delta in output.deltas:
            live = self._live.get(delta.request_id)
            if live is None:
                continue
            live.num_tokens += len(delta.token_ids)
            if delta.finish is not None:
                del self._live[delta.request_id]
                self._finish(live, delta.finish)

    def on_failures(self, failures: list[RequestFailed]) -> None:
        for failure in failures:
            live = self._live.pop(failure.request_id, None)
            if live is not None:
                live.span.set_attribute(names.ERROR_REASON, failure.reason.value)
                live.span.set_status(Status(StatusCode.ERROR, failure.message))
                live.span.end()

    def close(self, request_ids: tuple[str, ...], why: str) -> None:
        """End these requests' spans without a finish (they left this worker unserved)."""
        for request_id in request_ids:
            live = self._live.pop(request_id, None)
            if live is not None:
                live.span.add_event(why)
                live.span.end()

    def close_all(self, why: str) -> None:
        """End every open span (the worker is stopping), so that what was traced is still exported."""
        for live in self._live.values():
            live.span.add_event(why)
            live.span.end()
        self._live.clear()

    def _finish(self, live: _Live, finish: Finish) -> None:
        end_ns = time.time_ns()
        span = live.span
        # The engine measured the three phases on one clock; lay them end to end from the arrival.
        queue_end = live.start_ns + round(finish.queue_time * 1e9)
        prefill_end = queue_end + round(finish.prefill_time * 1e9)
        decode_end = min(prefill_end + round(finish.decode_time * 1e9), end_ns)
        parent = trace.set_span_in_context(span)
        self._child(names.QUEUE, parent, live.start_ns, min(queue_end, end_ns))
        if finish.prefill_time > 0:
            self._child(names.PREFILL, parent, queue_end, min(prefill_end, end_ns))
        if finish.decode_time > 0:
            attributes = {names.GEN_AI_USAGE_OUTPUT_TOKENS: live.num_tokens}
            if live.num_tokens > 1:
                attributes[names.DECODE_TIME_PER_TOKEN] = 1e3 * finish.decode_time / (live.num_tokens - 1)
            self._child(names.DECODE, parent, prefill_end, decode_end, attributes)
        span.set_attribute(names.GEN_AI_USAGE_OUTPUT_TOKENS, live.num_tokens)
        span.set_attribute(names.GEN_AI_RESPONSE_FINISH_REASONS, [finish.reason.value])
        if finish.reason is FinishReason.CANCELLED:
            span.add_event("cancelled")
        span.end(end_time=end_ns)

    def _child(
        self, name: str, parent: object, start_ns: int, end_ns: int, attributes: dict | None = None
    ) -> None:
        span = self._tracer.start_span(name, context=parent, start_time=start_ns, attributes=attributes)  # type: ignore[arg-type]
        span.end(end_time=max(start_ns, end_ns))


def links_for(spans: RequestSpans, request_ids: list[str]) -> list[Link]:
    """Links from a step span to the traced requests it served."""
    contexts = (spans.context(request_id) for request_id in request_ids)
    return [Link(context) for context in contexts if context is not None]
