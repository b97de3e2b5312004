"""Logging for the gateway: JSON lines (the default for `serve`) or text, on stderr.

A JSON line holds `time` (UTC, ISO 8601), `level`, `logger`, `process` ("gateway"), `message`, and when known
`trace_id` and `span_id` (the current span) and `request_id` (the call being served, from `current_request_id`);
`extra=` fields are kept (the access log's method, code, tokens and durations), an exception becomes `exception`.
Worker processes write the same shape (`workers.telemetry.logs`).
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import sys

from opentelemetry import trace

# The request id of the call this task serves; set once the request is admitted.
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A value shown bare in a text line's `key=value` pairs; anything else is quoted (see `text_value`).
_BARE_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]+")


def text_value(value: object) -> str:
    """`value` for a `key=value` pair of a text log line: bare when it is one plain word, else a JSON string.

    Quoting keeps a caller-chosen value (a request id such as `x code=OK level=CRITICAL`) from reading as extra
    fields, and escapes quotes, backslashes and control characters, so one value cannot forge another line.
    """
    text = str(value)
    return text if _BARE_VALUE.fullmatch(text) else json.dumps(text)


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str = "gateway") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "process": self.process,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        request_id = current_request_id.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(
            {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS and not k.startswith("_")}
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Send every log record to stderr, as JSON lines or text; replaces any handler already installed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
