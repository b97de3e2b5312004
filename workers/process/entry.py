"""The worker process's entry point: the `spawn` target the gateway starts, one process per GPU.

Standard library only at import time: the gateway imports this module to hand `main` to
`multiprocessing.get_context("spawn").Process(target=main, args=(child_conn, config))` and must never import
torch. Everything heavy is imported inside `main`, after `CUDA_VISIBLE_DEVICES` is set, since CUDA reads it once
when torch initializes it.
"""

from __future__ import annotations

import os
import sys
from multiprocessing.connection import Connection

from workers.protocol import WorkerConfig
from workers.signals import ignore_stop_signals
from workers.telemetry.logs import configure_logging


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

    from workers.process.worker import run_worker
    from workers.telemetry.setup import start_telemetry

    telemetry = start_telemetry(config)
    try:
        exit_code = run_worker(conn, config, telemetry)
    finally:
        telemetry.shutdown()
    if exit_code != 0:
        sys.exit(exit_code)
