"""The worker process's entry point: the `spawn` target the gateway starts, one process per GPU.

Standard library only at import time: the gateway imports this module to hand `main` to
`multiprocessing.get_context("spawn").Process(target=main, args=(child_conn, config))` and must never import
torch. Everything heavy is imported inside `main`, after `CUDA_VISIBLE_DEVICES` is set, since CUDA reads it once
when torch initializes it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from multiprocessing.connection import Connection

from workers.protocol import WorkerConfig


def main(conn: Connection, config: WorkerConfig) -> None:
    """Run a worker until Shutdown or the pipe closes (exit code 0), or until it fails (exit code 1).

    Sends `LoadProgress`, then `Ready` or `WorkerFailed`, then one `StepOutput` per engine step that produced
    anything, and `RequestFailed` for requests that failed alone.
    """
    if config.cuda_visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = config.cuda_visible_devices
    ignore_stop_signals()
    if config.telemetry.kernel_capture != "off":
        # Without this, every step after a profiled one stays slower (CUPTI left attached; see docs/tracing.md).
        os.environ.setdefault("TEARDOWN_CUPTI", "1")
    configure_logging(config)

    from workers.telemetry.setup import start_telemetry
    from workers.worker import run_worker

    telemetry = start_telemetry(config)
    try:
        exit_code = run_worker(conn, config, telemetry)
    finally:
        telemetry.shutdown()
    if exit_code != 0:
        sys.exit(exit_code)


def ignore_stop_signals() -> None:
    """Ignore SIGINT and SIGTERM: the gateway alone decides when a worker stops.

    Ctrl-C, `kill -- -PGID`, systemd's default KillMode=control-group and some container runtimes signal every
    process of the group at once. The gateway then drains: its requests in flight finish on the workers, which it
    stops afterwards (`Shutdown`, or SIGKILL past the timeout). A worker that died of the same signal would cut
    every stream. The watchdog's SIGKILL and the gateway's death (the pipe closes) still end a worker.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def configure_logging(config: WorkerConfig, process: str | None = None) -> None:
    """Log to stderr as the gateway does (JSON lines or text), naming the process ("worker-0-rank-1")."""
    process = process or f"worker-{config.worker_id}"
    handler = logging.StreamHandler(sys.stderr)
    if config.telemetry.log_format == "json":
        from workers.telemetry.logs import JsonFormatter

        handler.setFormatter(JsonFormatter(process=process))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = logging.getLevelName(config.log_level.upper())
    root.setLevel(level if isinstance(level, int) else logging.INFO)
