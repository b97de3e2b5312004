"""JSON log lines: the same shape in the gateway and the workers, with trace_id, span_id and request_id."""

from __future__ import annotations

import json
import logging
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from autoglm_rpc.telemetry import semconv
from autoglm_rpc.telemetry.logs import JsonFormatter, current_request_id
from workers.telemetry import logs as worker_logs
from workers.telemetry import names


def _record(message: str = "hello %s", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("autoglm_rpc.test", logging.INFO, __file__, 1, message, ("world",), None)
    record.__dict__.update(extra)
    return record


def test_gateway_line_has_the_current_span_and_request_id() -> None:
    tracer = TracerProvider().get_tracer("test")
    token = current_request_id.set("req-1")
    try:
        with tracer.start_as_current_span("call") as span:
            line = json.loads(JsonFormatter().format(_record(code="OK", tokens=3)))
            context = span.get_span_context()
    finally:
        current_request_id.reset(token)
    assert line["message"] == "hello world" and line["level"] == "INFO" and line["process"] == "gateway"
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert (line["request_id"], line["code"], line["tokens"]) == ("req-1", "OK", 3)


def test_worker_line_has_the_same_shape() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("step"):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            record = _record(request_id="req-2")
            record.exc_info = sys.exc_info()
            worker = json.loads(worker_logs.JsonFormatter("worker-0").format(record))
            token = current_request_id.set("req-2")
            gateway = json.loads(JsonFormatter().format(record))
            current_request_id.reset(token)
    assert worker.keys() == gateway.keys()
    assert worker["process"] == "worker-0" and "RuntimeError: boom" in worker["exception"]


def test_no_span_no_ids() -> None:
    assert not trace.get_current_span().get_span_context().is_valid
    line = json.loads(JsonFormatter().format(_record()))
    assert "trace_id" not in line and "request_id" not in line


def test_both_sides_pin_the_same_semantic_conventions() -> None:
    assert semconv.SEMCONV_VERSION == names.SEMCONV_VERSION
    shared = {name for name in dir(names) if name.startswith("GEN_AI_")} | {
        "REQUEST_ID",
        "WORKER_ID",
        "ERROR_REASON",
    }
    assert {name: getattr(names, name) for name in shared} == {name: getattr(semconv, name) for name in shared}
