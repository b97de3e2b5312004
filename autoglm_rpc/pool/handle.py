"""One worker process as the gateway sees it: the process, its pipe, and two small threads that move messages.

A reader thread blocks on the pipe and hands every message to the event loop (`call_soon_threadsafe`), so the loop
never blocks on a read; a writer thread drains an outbox, so a large `Submit` never blocks the loop on a full pipe.
The pipe's end-of-file is how the gateway learns, at once, that the process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import multiprocessing
import queue
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from workers import entry
from workers.protocol import GatewayMessage, ModelInfo, Shutdown, WorkerConfig, WorkerMessage

logger = logging.getLogger(__name__)

_STOP_WRITER = object()


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


class WorkerHandle:
    """Starts and talks to one worker process. Callbacks run on the event loop thread."""

    def __init__(
        self,
        config: WorkerConfig,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[WorkerHandle, WorkerMessage], None],
        on_exit: Callable[[WorkerHandle], None],
    ) -> None:
        self.config = config
        self.state = WorkerState.STARTING
        self.model: ModelInfo | None = None
        self.num_in_flight = 0  # requests routed here and not yet finished by the worker
        self._loop = loop
        self._on_message = on_message
        self._on_exit = on_exit
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._exited = asyncio.Event()

    @property
    def worker_id(self) -> int:
        return self.config.worker_id

    @property
    def is_ready(self) -> bool:
        return self.state is WorkerState.READY

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Spawn the process (fresh interpreter: no CUDA or thread state inherited) and the pipe threads."""
        context = multiprocessing.get_context("spawn")
        parent_conn, child_conn = context.Pipe(duplex=True)
        self._process = context.Process(
            target=entry.main,
            args=(child_conn, self.config),
            name=f"autoglm-worker-{self.worker_id}",
            daemon=True,
        )
        self._process.start()
        # Our copy of the child's end must go, or the reader would never see end-of-file when the child dies.
        child_conn.close()
        self._conn = parent_conn
        name = f"worker-{self.worker_id}"
        threading.Thread(target=self._read_loop, name=f"{name}-reader", daemon=True).start()
        threading.Thread(target=self._write_loop, name=f"{name}-writer", daemon=True).start()
        logger.info("worker %d started (pid %d)", self.worker_id, self._process.pid)

    def send(self, message: GatewayMessage) -> None:
        """Queue a message for the worker; never blocks. Messages are delivered in order."""
        self._outbox.put(message)

    async def stop(self, timeout: float) -> int | None:
        """Ask the worker to shut down, terminating it if it has not exited in `timeout`; return its exit code."""
        process = self._process
        if process is None:
            return None
        if process.is_alive():
            self.send(Shutdown())
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            logger.warning("worker %d did not exit within %.1fs; terminating it", self.worker_id, timeout)
            process.terminate()
        await asyncio.to_thread(process.join, 5.0)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, 5.0)
        self._outbox.put(_STOP_WRITER)
        return process.exitcode

    def _read_loop(self) -> None:
        conn = self._conn
        assert conn is not None  # set before the thread starts
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # an unpicklable message is a bug in the worker, not a reason to hang
                logger.exception("worker %d sent a message the gateway cannot read", self.worker_id)
                break
            self._call_in_loop(self._on_message, self, message)
        self._call_in_loop(self._handle_exit)

    def _handle_exit(self) -> None:
        self._exited.set()
        self._outbox.put(_STOP_WRITER)
        self._on_exit(self)

    def _write_loop(self) -> None:
        conn = self._conn
        assert conn is not None
        while (message := self._outbox.get()) is not _STOP_WRITER:
            try:
                conn.send(message)
            except (OSError, ValueError):
                return  # the reader sees the same broken pipe and reports the exit

    def _call_in_loop(self, callback: Callable[..., None], *args: object) -> None:
        # A closed loop means the gateway is gone and nobody is listening.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)
