"""The access log: one line per call of our services, gRPC or HTTP, on the `autoglm_rpc.access` logger."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace

from autoglm_rpc.telemetry.calls import CallRecord
from autoglm_rpc.telemetry.logs import text_value

access_logger = logging.getLogger("autoglm_rpc.access")


def access_log(
    record: CallRecord, code: str, duration: float, span_context: trace.SpanContext, **extra: Any
) -> None:
    """One line for a call that ended with `code` (a gRPC status name, or an HTTP status) after `duration` s."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    ttft_ms = None if record.time_to_first_token is None else round(1e3 * record.time_to_first_token, 3)
    fields: dict[str, Any] = {
        "method": record.method,
        "code": code,
        "duration_ms": round(1e3 * duration, 3),
        "request_id": record.request_id,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens if record.prompt_tokens is not None else None,
        "time_to_first_token_ms": ttft_ms,
        "finish_reason": record.finish_reason,
        "peer": record.peer,
        **extra,
    }
    if span_context.is_valid:  # the call's own span, which has ended by now
        fields["trace_id"] = format(span_context.trace_id, "032x")
        fields["span_id"] = format(span_context.span_id, "016x")
    if record.prompt is not None:
        fields["prompt"] = record.prompt
    fields = {key: value for key, value in fields.items() if value is not None}
    shown = (
        "request_id",
        "prompt_tokens",
        "completion_tokens",
        "duration_ms",
        "time_to_first_token_ms",
        "finish_reason",
    )
    text = " ".join(f"{key}={text_value(fields[key])}" for key in shown if key in fields)
    access_logger.info("%s %s %s", record.method, code, text, extra=fields)
