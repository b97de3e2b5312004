"""The `generate`, `route` and `pipe.send` spans, and the request metrics, observing the front end's events.

`GenerationTelemetry.observe` gives `Frontend.generate` its observer (`GenerationSpan`): a `generate <model>` span,
child of the trace context the edge built (the RPC or HTTP span), current while the request is routed (so it is
the parent of what follows); it reads the events for the request id, the first token, the usage and the finish
reason, and records the metrics and the call record that the access log reads. It never wraps or drives the data
path. `PoolObserver` is
the pool's hook: when a request is routed it writes `route` and `pipe.send worker-<i>` (PRODUCER) and injects the
W3C carrier of `pipe.send` into the `Submit`, so the worker's `request` span continues this trace; it also keeps
the workers' reported load for the gauges. Prompt and output text never go into a span.
"""

from __future__ import annotations

import asyncio
import dataclasses
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from autoglm_rpc.core.errors import ServiceError
from autoglm_rpc.core.requests import (
    Admitted,
    ChatPrompt,
    Completed,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
)
from autoglm_rpc.telemetry import semconv
from autoglm_rpc.telemetry.calls import CallRecord, current_call
from autoglm_rpc.telemetry.logs import current_request_id
from autoglm_rpc.telemetry.metrics import GatewayMetrics
from workers.protocol import StepOutput, Submit

if TYPE_CHECKING:
    from autoglm_rpc.pool.handle import WorkerHandle
    from autoglm_rpc.pool.pool import WorkerPool

# Statuses that are the server's fault; the others (a bad request, a cancel) leave the span status unset.
SERVER_FAULT_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)


class GenerationTelemetry:
    def __init__(self, tracer: trace.Tracer, metrics: GatewayMetrics, model_id: str, log_prompts: bool) -> None:
        self._tracer = tracer
        self._metrics = metrics
        self._model_id = model_id
        self._log_prompts = log_prompts

    def observe(self, request: GenerationRequest, *, stream: bool) -> GenerationSpan:
        """The observer of one request for `Frontend.generate`: a `generate <model>` span, child of the trace
        context the edge made current (the RPC or HTTP span)."""
        call = current_call.get() or CallRecord(method="")
        if self._log_prompts:
            call.prompt = _prompt_text(request)
        span = self._tracer.start_span(
            f"{semconv.GENERATE} {self._model_id}", attributes=_request_attributes(request, self._model_id, stream)
        )
        return GenerationSpan(span, self._metrics, call)


class GenerationSpan:
    """Reads a request's events once, for the span, the metrics and the call record (a `GenerationObserver`)."""

    def __init__(self, span: trace.Span, metrics: GatewayMetrics, call: CallRecord) -> None:
        self.span = span
        self.metrics = metrics
        self.call = call
        self.has_first_token = False
        self.is_complete = False

    def admitting(self) -> AbstractContextManager[object]:
        """The span is current while the request is routed: `route` and `pipe.send` are its children."""
        return trace.use_span(self.span, end_on_exit=False, record_exception=False, set_status_on_exception=False)

    def saw(self, event: GenerationEvent) -> None:
        match event:
            case TextDelta(token_ids=token_ids) if token_ids:
                if not self.has_first_token:
                    self.has_first_token = True
                    self.span.add_event(semconv.EVENT_FIRST_TOKEN)
                self.call.completion_tokens += len(token_ids)
                self.metrics.output_tokens.inc(len(token_ids))
            case Admitted(request_id=request_id, prompt_tokens=prompt_tokens):
                current_request_id.set(request_id)
                self.call.request_id, self.call.prompt_tokens = request_id, prompt_tokens
                self.span.set_attributes(
                    {
                        semconv.GEN_AI_RESPONSE_ID: request_id,
                        semconv.REQUEST_ID: request_id,
                        semconv.GEN_AI_USAGE_INPUT_TOKENS: prompt_tokens,
                        semconv.GEN_AI_REQUEST_SEED: event.seed,
                    }
                )
                self.metrics.prompt_tokens.inc(prompt_tokens)
            case Completed():
                self._complete(event)

    def ended(self, error: BaseException | None) -> None:
        match error:
            case None:
                pass
            case GeneratorExit() | asyncio.CancelledError() if self.is_complete:
                pass  # the caller had its whole answer, then let go of the stream
            case GeneratorExit() | asyncio.CancelledError():
                self.span.add_event(semconv.EVENT_CANCELLED)
            case ServiceError():
                self.span.set_attribute(semconv.ERROR_TYPE, error.reason)
                if error.code.name in SERVER_FAULT_CODES:
                    self.span.set_status(Status(StatusCode.ERROR, error.reason))
            case _:
                self.span.set_attribute(semconv.ERROR_TYPE, type(error).__qualname__)
                self.span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
        self.span.end()

    def _complete(self, done: Completed) -> None:
        self.is_complete = True
        timings, num_tokens = done.timings, len(done.token_ids)
        self.call.finish_reason = done.finish_reason.value
        self.call.time_to_first_token = timings.time_to_first_token
        self.span.set_attributes(
            {
                semconv.GEN_AI_RESPONSE_MODEL: self.metrics.model_id,
                semconv.GEN_AI_RESPONSE_FINISH_REASONS: [done.finish_reason.value],
                semconv.GEN_AI_USAGE_OUTPUT_TOKENS: num_tokens,
                semconv.TIME_TO_FIRST_TOKEN: 1e3 * timings.time_to_first_token,
                semconv.QUEUE_TIME: 1e3 * timings.queue_time,
            }
        )
        if num_tokens:
            self.metrics.time_to_first_token.observe(timings.time_to_first_token)
        if num_tokens > 1:
            self.metrics.time_per_output_token.observe(timings.decode_time / (num_tokens - 1))


class PoolObserver:
    """The pool's hook (`WorkerPool.observer`): spans at routing, worker load for the gauges."""

    def __init__(self, tracer: trace.Tracer | None, metrics: GatewayMetrics, pool: WorkerPool) -> None:
        self._tracer = tracer
        self._metrics = metrics
        self._pool = pool

    def routed(self, submit: Submit, worker: WorkerHandle) -> Submit:
        """`submit` as it goes down the pipe, with the W3C carrier of the trace context the edge built.

        When the gateway traces, that is the `pipe.send` span's (a child of the call's spans); when it does not,
        it is the caller's own context, which the edge (the interceptor or the HTTP middleware) extracted once
        and made current, so the worker's log lines still carry the caller's trace id.
        """
        if self._tracer is None:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            return dataclasses.replace(submit, trace_carrier=carrier) if carrier else submit
        tracer = self._tracer
        tracer.start_span(
            semconv.ROUTE,
            attributes={
                semconv.WORKER_ID: worker.worker_id,
                semconv.ROUTE_IN_FLIGHT: worker.num_in_flight,
                semconv.ROUTE_CANDIDATES: self._pool.num_ready,
            },
        ).end()
        send = tracer.start_span(f"{semconv.PIPE_SEND} worker-{worker.worker_id}", kind=SpanKind.PRODUCER)
        carrier = {}
        propagate.inject(carrier, context=trace.set_span_in_context(send))
        call = current_call.get()
        capture = call is not None and call.capture_kernels
        if capture:
            send.set_attribute(semconv.KERNEL_CAPTURE, True)
        send.end()
        return dataclasses.replace(submit, trace_carrier=carrier, capture_kernels=capture)

    def restarted(self, worker: WorkerHandle) -> None:
        self._metrics.record_worker_restart(worker.worker_id)

    def stepped(self, worker: WorkerHandle, output: StepOutput) -> None:
        self._metrics.record_load(worker.worker_id, output)


def _request_attributes(request: GenerationRequest, model_id: str, stream: bool) -> dict[str, object]:
    is_chat = isinstance(request.prompt, ChatPrompt)
    attributes: dict[str, object] = {
        semconv.GEN_AI_OPERATION_NAME: semconv.OPERATION_CHAT if is_chat else semconv.OPERATION_TEXT_COMPLETION,
        semconv.GEN_AI_PROVIDER_NAME: semconv.PROVIDER,
        semconv.GEN_AI_REQUEST_MODEL: request.model or model_id,
        semconv.GEN_AI_REQUEST_STREAM: stream,
    }
    sampling, stopping = request.sampling, request.stopping
    optional = {
        semconv.GEN_AI_REQUEST_MAX_TOKENS: stopping.max_new_tokens,
        semconv.GEN_AI_REQUEST_TEMPERATURE: sampling.temperature,
        semconv.GEN_AI_REQUEST_TOP_P: sampling.top_p,
        semconv.GEN_AI_REQUEST_TOP_K: sampling.top_k,
        semconv.GEN_AI_REQUEST_FREQUENCY_PENALTY: sampling.frequency_penalty,
        semconv.GEN_AI_REQUEST_PRESENCE_PENALTY: sampling.presence_penalty,
    }
    attributes.update({key: value for key, value in optional.items() if value is not None})
    return attributes


def _prompt_text(request: GenerationRequest) -> str:
    match request.prompt:
        case str():
            return request.prompt
        case ChatPrompt(messages=messages):
            return "\n".join(f"{m.role}: {m.display_text}" for m in messages)
    return f"<{len(getattr(request.prompt, 'ids', ()))} token ids>"
