"""The worker process's loop: load the model, report Ready, then serve the pipe step by step.

Idle, the loop blocks until the gateway sends something. Busy, it takes every message that has arrived without
waiting, runs one engine step and sends that step's `StepOutput` (one message per step, whatever the number of
requests in it). `Ping` and `Withdraw` are answered between steps (`Pong`; `Withdrawn`, with the requests given
back to the gateway because another worker became ready). `Shutdown` or the pipe closing (the gateway is gone)
ends the loop normally; an exception that escapes the engine is fatal: the worker sends `WorkerFailed` and exits
non-zero.

A reader thread moves messages from the pipe into a queue as soon as they arrive, so the gateway's sends never
wait on a long step: a pipe's kernel buffer is small (64 KiB on Linux) and a burst of long prompts would
otherwise fill it and block the gateway's sender until the step ends.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from multiprocessing.connection import Connection

import torch

from workers.engine.engine import Engine
from workers.process.load import start_engine
from workers.protocol import (
    Cancel,
    GatewayMessage,
    LoadProgress,
    Ping,
    Pong,
    Ready,
    Shutdown,
    Submit,
    Withdraw,
    Withdrawn,
    WorkerConfig,
    WorkerFailed,
)
from workers.telemetry.setup import WorkerTelemetry

logger = logging.getLogger(__name__)

_PIPE_CLOSED = object()  # put on the inbox by the reader thread when the gateway's end closes


def run_worker(conn: Connection, config: WorkerConfig, telemetry: WorkerTelemetry | None = None) -> int:
    """Load, report Ready and serve until Shutdown or EOF; returns the process exit code (0 or 1)."""
    engine: Engine | None = None
    try:
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        engine = _start_engine(conn, config)
        _serve(conn, engine, telemetry or WorkerTelemetry(), config.worker_id)
        logger.info("worker %s stops", config.worker_id)
        return 0
    except (BrokenPipeError, EOFError, ConnectionResetError):
        logger.info("the gateway closed the pipe; worker %s stops", config.worker_id)
        return 0
    except Exception as exc:
        repeats = engine is None and load_failure_repeats(exc)
        if repeats:  # an operator's problem (files, settings): the message says it; the stack is for debugging
            logger.error("worker %s cannot load the model: %s: %s", config.worker_id, type(exc).__name__, exc)
            logger.debug("the failure's stack", exc_info=True)
        else:
            logger.exception("worker %s failed", config.worker_id)
        failed = WorkerFailed(config.worker_id, f"{type(exc).__name__}: {exc}", will_repeat=repeats)
        # If the gateway is gone too, the exit code tells the rest.
        with contextlib.suppress(OSError):
            conn.send(failed)
        return 1


def load_failure_repeats(error: BaseException) -> bool:
    """Whether a failure while loading would happen again on a restart.

    Files, weights, shapes, settings and unsupported models fail the same way every time. Running out of memory
    and device (CUDA, NCCL) errors may be transient (another process held the memory, a GPU reset) and are not.
    """
    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return False
    text = str(error)
    transient = ("out of memory", "CUDA error", "NCCL", "CUDA driver")
    return not (isinstance(error, RuntimeError) and any(marker in text for marker in transient))


def _start_engine(conn: Connection, config: WorkerConfig) -> Engine:
    def on_progress(stage: str, fraction: float) -> None:
        conn.send(LoadProgress(worker_id=config.worker_id, stage=stage, fraction=fraction))

    engine, info = start_engine(config, on_progress)
    conn.send(Ready(worker_id=config.worker_id, model=info, longest_step=engine.longest_step))
    logger.info("worker %s ready: %s", config.worker_id, info)
    return engine


def _serve(conn: Connection, engine: Engine, telemetry: WorkerTelemetry, worker_id: int) -> None:
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_read_pipe, args=(conn, inbox), name="pipe-reader", daemon=True).start()
    while True:
        # Block only when there is nothing to run; otherwise take what has arrived and step.
        message = inbox.get() if not engine.has_work() else _get_nowait(inbox)
        while message is not None:
            if message is _PIPE_CLOSED:
                raise EOFError("pipe closed")
            if isinstance(message, Submit):
                telemetry.on_submit(message)
            if isinstance(message, Ping):  # answered here, between steps: a wedged step answers nothing
                conn.send(Pong(worker_id, message.sequence, engine.longest_step))
            if isinstance(message, Withdraw):
                withdrawn = tuple(engine.withdraw(message.count))
                telemetry.on_withdrawn(withdrawn)
                conn.send(Withdrawn(worker_id, withdrawn))
            if not _handle(message, engine):
                return
            message = _get_nowait(inbox)
        _send_all(conn, telemetry.on_failures(engine.pop_failures()))
        if engine.has_work():
            output = telemetry.run_step(engine)
            if output.deltas:
                conn.send(output)
            _send_all(conn, telemetry.on_failures(engine.pop_failures()))


def _handle(message: GatewayMessage, engine: Engine) -> bool:
    """Apply one gateway message; False means stop serving."""
    match message:
        case Submit():
            engine.add(message)
        case Cancel(request_ids=request_ids):
            engine.cancel(request_ids)
        case Shutdown():
            return False
        case Ping() | Withdraw():
            pass  # answered by the serving loop
        case _:
            logger.warning("ignoring an unexpected message: %r", type(message).__name__)
    return True


def _read_pipe(conn: Connection, inbox: queue.SimpleQueue) -> None:
    try:
        while True:
            inbox.put(conn.recv())
    except (EOFError, OSError):
        inbox.put(_PIPE_CLOSED)


def _get_nowait(inbox: queue.SimpleQueue):
    try:
        return inbox.get_nowait()
    except queue.Empty:
        return None


def _send_all(conn: Connection, messages: list) -> None:
    for message in messages:
        conn.send(message)
