"""A grpc.aio server interceptor of our own: the RPC span, the request metrics and one access-log line per call.

It wraps the handlers of our services (not health or reflection): unary calls, and server-streaming calls whether
the handler yields or writes with `context.write()`. The span is SERVER, named after the full method, parented by
the caller's `traceparent`, and current while the handler runs. Its final status follows the gRPC conventions for
servers: the `rpc.grpc.status_code` attribute always; span status ERROR only for the codes that are the server's
fault (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS); a client's cancel is
CANCELLED with a `cancelled` event. (opentelemetry-instrumentation-grpc's aio interceptor leaves the status unset
on cancel and on exceptions and breaks `context.write()` handlers, hence this.)
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from autoglm_rpc.telemetry import semconv
from autoglm_rpc.telemetry.access import access_log
from autoglm_rpc.telemetry.attach import attached, reset_here
from autoglm_rpc.telemetry.calls import CallRecord, current_call
from autoglm_rpc.telemetry.generation import SERVER_FAULT_CODES
from autoglm_rpc.telemetry.metrics import GatewayMetrics

_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
GENERATION_METHODS = frozenset({"Generate", "GenerateStream"})


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tracer: trace.Tracer, metrics: GatewayMetrics, services: frozenset[str]) -> None:
        self._tracer = tracer
        self._metrics = metrics
        self._services = services

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        full_method = handler_call_details.method
        service, _, method = full_method.lstrip("/").rpartition("/")
        if handler is None or service not in self._services:
            return handler
        call = _Call(self, full_method, service, method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                call.wrap_unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                call.wrap_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        return handler


class _Call:
    """One method's wrapping; `begin`/`end` run once per call."""

    def __init__(self, interceptor: TelemetryInterceptor, full_method: str, service: str, method: str) -> None:
        self.interceptor = interceptor
        self.full_method = full_method
        self.service = service
        self.method = method

    def wrap_unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            span, record, started = self._begin(context)
            token = current_call.set(record)
            error: BaseException | None = None
            try:
                with trace.use_span(
                    span, end_on_exit=False, record_exception=False, set_status_on_exception=False
                ):
                    return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._end(span, record, context, error, started)
                current_call.reset(token)

        return unary

    def wrap_stream(self, behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span, record, started = self._begin(context)
            # Not `use_span`: when the caller goes away, grpc may close this generator from another Context,
            # where resetting the tokens raises (see attach.py).
            call_token = current_call.set(record)
            error: BaseException | None = None
            try:
                with attached(span):
                    result = behavior(request, context)
                    if inspect.isawaitable(result):  # a handler that writes with context.write()
                        await result
                    else:
                        async for message in result:
                            yield message
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._end(span, record, context, error, started)
                reset_here(current_call, call_token)

        return stream

    def _begin(self, context: grpc.aio.ServicerContext) -> tuple[trace.Span, CallRecord, float]:
        metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        peer = context.peer()  # now, while the call is alive: see CallRecord.peer
        span = self.interceptor._tracer.start_span(
            self.full_method,
            context=propagate.extract(metadata),
            kind=SpanKind.SERVER,
            attributes={
                semconv.RPC_SYSTEM: "grpc",
                semconv.RPC_SERVICE: self.service,
                semconv.RPC_METHOD: self.method,
                semconv.NETWORK_PEER_ADDRESS: peer or "",
            },
        )
        capture = metadata.get(semconv.PROFILE_METADATA_KEY, "").strip().lower() == semconv.PROFILE_KERNELS
        return span, CallRecord(self.full_method, capture_kernels=capture, peer=peer), time.monotonic()

    def _end(
        self,
        span: trace.Span,
        record: CallRecord,
        context: grpc.aio.ServicerContext,
        error: BaseException | None,
        started: float,
    ) -> None:
        duration = time.monotonic() - started
        code = final_code(context, error)
        span.set_attribute(semconv.RPC_GRPC_STATUS_CODE, code.value[0])
        if code is grpc.StatusCode.CANCELLED:
            span.add_event(semconv.EVENT_CANCELLED)
        if code.name in SERVER_FAULT_CODES:
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {_details(context)}"))
        span.end()
        if self.method in GENERATION_METHODS:
            self.interceptor._metrics.record_request(code.name, duration)
        access_log(record, code.name, duration, span.get_span_context())


def final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status the caller gets, as far as the server knows when the handler returns or raises."""
    if isinstance(error, asyncio.CancelledError):
        return _ended_early(context)
    code = _context_code(context)
    if code is not None:
        return code
    if isinstance(error, GeneratorExit):
        # grpc stopped reading the stream before it ended: the caller cancelled (or its deadline passed) while a
        # message was being sent, so the task's cancellation hit grpc's sender and not this generator.
        return _ended_early(context)
    if error is None:
        return grpc.StatusCode.OK
    return grpc.StatusCode.UNKNOWN  # grpc reports an exception that escapes a handler as UNKNOWN


def _ended_early(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    remaining = context.time_remaining()
    expired = remaining is not None and remaining <= 0
    return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


def _context_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode | None:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _CODES_BY_VALUE.get(code)
    return None


def _details(context: grpc.aio.ServicerContext) -> str:
    details = context.details()
    return details.decode(errors="replace") if isinstance(details, bytes) else str(details or "")
