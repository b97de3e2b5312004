"""ASGI middleware for the HTTP API: the HTTP server span, the request metrics and the access-log line per call.

The HTTP twin of `TelemetryInterceptor`, written against the ASGI interface alone (no web framework import). For
every `/v1/` call it opens a SERVER span named `<method> <route>`, continuing the caller's W3C `traceparent`, and
makes it and the call's `CallRecord` current while the app runs, so the `generate` span and the record filled by
`GenerationTelemetry` are the same as for gRPC. When the call ends it sets `http.response.status_code` (span
status ERROR for 5xx only), counts the completion routes in `autoglm_requests_total{protocol="http"}` and writes
the access log line. A client that goes away before the response ends is logged with code 499 and a `cancelled`
span event.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from autoglm_rpc.telemetry import semconv
from autoglm_rpc.telemetry.access import access_log
from autoglm_rpc.telemetry.calls import CallRecord, current_call
from autoglm_rpc.telemetry.metrics import GatewayMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
CLIENT_CLOSED = 499  # no HTTP status exists for "the client went away"; 499 is the common convention


class HttpTelemetryMiddleware:
    def __init__(self, app: App, tracer: trace.Tracer, metrics: GatewayMetrics) -> None:
        self.app = app
        self.tracer = tracer
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        call = _HttpCall(scope)
        span = self.tracer.start_span(
            f"{scope['method']} {call.route}",
            context=propagate.extract(call.headers),
            kind=SpanKind.SERVER,
            attributes={
                semconv.HTTP_REQUEST_METHOD: scope["method"],
                semconv.HTTP_ROUTE: call.route,
                semconv.URL_PATH: scope["path"],
                semconv.URL_SCHEME: scope.get("scheme", "http"),
                semconv.NETWORK_PEER_ADDRESS: call.record.peer or "",
            },
        )
        call_token = current_call.set(call.record)
        otel_token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, call.receive(receive), call.send(send))
        finally:
            otel_context.detach(otel_token)
            current_call.reset(call_token)
            self._end(call, span)

    def _end(self, call: _HttpCall, span: trace.Span) -> None:
        duration = time.monotonic() - call.started
        status = call.status
        if call.is_disconnected and not call.is_finished:
            status = CLIENT_CLOSED
            span.add_event(semconv.EVENT_CANCELLED)
        span.set_attribute(semconv.HTTP_RESPONSE_STATUS_CODE, status)
        if status >= 500 and status != CLIENT_CLOSED:
            span.set_status(Status(StatusCode.ERROR, str(status)))
        span.end()
        if call.scope["path"] in GENERATION_PATHS:
            self.metrics.record_request(str(status), duration, "http")
        access_log(call.record, str(status), duration, span.get_span_context(), protocol="http")


class _HttpCall:
    """What the middleware learns of one call: its headers, its response status, whether the client left."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.started = time.monotonic()
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        self.route = "/v1/models/{name}" if path.startswith("/v1/models/") else path
        client = scope.get("client")
        capture = self.headers.get(semconv.PROFILE_METADATA_KEY, "").strip().lower() == semconv.PROFILE_KERNELS
        peer = f"{client[0]}:{client[1]}" if client else None
        self.record = CallRecord(f"{scope['method']} {path}", capture_kernels=capture, peer=peer)
        self.status = 500  # what the caller sees when the app raises before it responds
        self.is_finished = False
        self.is_disconnected = False

    def receive(self, receive: Receive) -> Receive:
        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.is_disconnected = True
            return message

        return watched

    def send(self, send: Send) -> Send:
        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self.is_finished = True
            await send(message)

        return watched
