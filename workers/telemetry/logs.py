"""JSON log lines for a worker process, the same shape as the gateway's (`autoglm_rpc.telemetry.logs`).

One JSON object per line on stderr: `time` (UTC, ISO 8601), `level`, `logger`, `process`, `message`, and when
known `trace_id`, `span_id` (the current span, or given with `extra=`) and `request_id` (given with `extra=`);
other `extra=` fields are kept, and an exception becomes `exception`. Standard library at import time: the OTel
API is imported on first use. `configure_logging` puts it (or the text format) on a worker's or a rank's root
logger.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys

from workers.protocol import WorkerConfig

# Attributes every LogRecord has; anything else on a record came from `extra=` and is written out.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
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
        entry.update(_current_span_ids())
        entry.update(
            {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS and not k.startswith("_")}
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _current_span_ids() -> dict[str, str]:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


def configure_logging(config: WorkerConfig, process: str | None = None) -> None:
    """Log to stderr as the gateway does (JSON lines or text), naming the process ("worker-0-rank-1")."""
    process = process or f"worker-{config.worker_id}"
    handler = logging.StreamHandler(sys.stderr)
    if config.telemetry.log_format == "json":
        handler.setFormatter(JsonFormatter(process=process))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = logging.getLevelName(config.log_level.upper())
    root.setLevel(level if isinstance(level, int) else logging.INFO)
