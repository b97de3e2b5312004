"""One worker slot as the gateway sees it: its current process, that process's pipe, and its state.

Each process the slot runs (the first, then one per restart) is a `_Process`: the spawned process, its end of the
pipe, an outbox, and two threads. The watcher thread waits on the pipe *and* on the process sentinel
(`multiprocessing.connection.wait`, no polling): messages go to the event loop as they arrive
(`call_soon_threadsafe`), and when the sentinel fires the watcher first delivers whatever the process wrote
before it died, then reaps it and reports the exit, so the loop learns of a death at once and after that
process's last message. The writer thread drains the outbox, so a large `Submit` never blocks the loop on a full
pipe. A restart is a new `_Process`; nothing of the old one (outbox, threads, descriptors) is reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import multiprocessing
import multiprocessing.util
import os
import queue
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, wait

from workers.process import entry
from workers.protocol import GatewayMessage, ModelInfo, Shutdown, StepOutput, WorkerConfig, WorkerMessage

logger = logging.getLogger(__name__)

_STOP_WRITER = object()
# How long a process that closed its pipe may take to exit before it is killed (it has nothing left to do).
_EXIT_AFTER_EOF = 5.0


class WorkerState(enum.Enum):
    """STARTING: spawned, loading the model. READY: takes requests. RESTARTING: died, a restart is scheduled.
    CRASH_LOOP: died too often within the restart window, not restarted. STOPPED: shut down by the gateway.
    HUNG: made no progress within the watchdog's timeout; killed, and RESTARTING once its exit is seen."""

    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    CRASH_LOOP = "crash_loop"
    STOPPED = "stopped"
    HUNG = "hung"


def describe_exit(exit_code: int | None) -> str:
    """How a process ended, in words: "exit code 1", "killed by signal SIGKILL"."""
    if exit_code is None:
        return "exit status unknown"
    if exit_code < 0:
        try:
            return f"killed by signal {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    return "exited normally" if exit_code == 0 else f"exit code {exit_code}"


def _kill_unless_reaped(pid: int, is_reaped: threading.Event) -> None:
    if not is_reaped.is_set():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class _Process:
    """One spawned worker process with its pipe, outbox and threads; lives from spawn to reaping."""

    def __init__(self, handle: WorkerHandle) -> None:
        context = multiprocessing.get_context("spawn")
        parent_conn, child_conn = context.Pipe(duplex=True)
        self.process = context.Process(
            target=entry.main,
            args=(child_conn, handle.config),
            name=f"autoglm-worker-{handle.worker_id}",
            daemon=True,
        )
        self.process.start()
        # Our copy of the child's end must go, or we would never see end-of-file when the child dies.
        child_conn.close()
        self.pid: int = self.process.pid  # type: ignore[assignment]  # set by start()
        self.conn: Connection = parent_conn
        self.outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.exit_code: int | None = None
        self.is_reaped = threading.Event()  # set by the watcher once the process is joined
        self.exited = asyncio.Event()  # set on the loop once the exit has been reported
        # Workers ignore SIGTERM (workers.signals), so multiprocessing's exit hook, which terminates daemonic
        # children and then joins them, would wait forever on one the gateway failed to stop (it exits on EOF,
        # and our end of the pipe is still open). A finalizer with an exit priority runs before that hook.
        multiprocessing.util.Finalize(self, _kill_unless_reaped, args=(self.pid, self.is_reaped), exitpriority=10)
        name = f"worker-{handle.worker_id}"
        self._writer = threading.Thread(target=self._write_loop, name=f"{name}-writer", daemon=True)
        self._writer.start()
        threading.Thread(target=self._watch, args=(handle,), name=f"{name}-watcher", daemon=True).start()

    def kill(self) -> None:
        """SIGKILL the process unless it has already been reaped (its pid could then be someone else's)."""
        _kill_unless_reaped(self.pid, self.is_reaped)

    def _watch(self, handle: WorkerHandle) -> None:
        sentinel = self.process.sentinel
        try:
            while True:
                ready = wait([self.conn, sentinel])
                if self.conn in ready:
                    if not self._receive(handle):
                        break
                elif sentinel in ready:
                    # Dead: what it wrote before dying is still in the pipe; deliver it before reporting the exit.
                    while self.conn.poll(0) and self._receive(handle):
                        pass
                    break
            if not wait([sentinel], _EXIT_AFTER_EOF):
                logger.warning("worker %d closed its pipe but did not exit; killing it", handle.worker_id)
                self.kill()
        except Exception:  # never leave the slot without a report: the process is then killed and reaped
            logger.exception("worker %d: watching its process failed; killing it", handle.worker_id)
            self.kill()
        finally:
            self._reap(handle)

    def _reap(self, handle: WorkerHandle) -> None:
        self.process.join()
        self.exit_code = self.process.exitcode
        self.is_reaped.set()
        # Another thread's multiprocessing.active_children() may have reaped it first; close() then refuses.
        with contextlib.suppress(ValueError):
            self.process.close()
        self.outbox.put(_STOP_WRITER)
        self._writer.join(_EXIT_AFTER_EOF)
        self.conn.close()
        handle.call_in_loop(handle.handle_exit, self)

    def _receive(self, handle: WorkerHandle) -> bool:
        """Pass one message to the loop; False at end-of-file or on an unreadable message."""
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            return False
        except Exception:  # an unpicklable message is a bug in the worker: treat the pipe as broken
            logger.exception("worker %d sent a message the gateway cannot read", handle.worker_id)
            self.kill()
            return False
        handle.call_in_loop(handle.deliver, self, message)
        return True

    def _write_loop(self) -> None:
        while (message := self.outbox.get()) is not _STOP_WRITER:
            try:
                self.conn.send(message)
            except (OSError, ValueError):
                return  # the process is gone; the watcher reports it


class WorkerHandle:
    """Starts, restarts, stops and talks to one worker slot. Callbacks and methods run on the event loop."""

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
        self.num_restarts = 0  # processes started after the first one
        self.num_hangs = 0  # times the watchdog found it hung
        self.last_exit = ""  # how the previous process ended, for operators ("killed by signal SIGKILL")
        self.failure = ""  # what the current process reported in WorkerFailed, if anything
        self.failure_will_repeat = False  # it failed loading in a way a restart would repeat
        self.last_step: StepOutput | None = None  # the current process's latest step report (its load, KV blocks)
        self._loop = loop
        self._on_message = on_message
        self._on_exit = on_exit
        self._current: _Process | None = None

    @property
    def worker_id(self) -> int:
        return self.config.worker_id

    @property
    def is_ready(self) -> bool:
        return self.state is WorkerState.READY

    @property
    def pid(self) -> int | None:
        """The running process's id; None between a death and the restart."""
        return self._current.pid if self._current else None

    def start(self) -> None:
        """Spawn a process (fresh interpreter: no CUDA or thread state inherited); the state becomes STARTING."""
        if self._current is not None:
            raise RuntimeError(f"worker {self.worker_id} already has a running process")
        self.state = WorkerState.STARTING
        self.model = None
        self.failure = ""
        self.failure_will_repeat = False
        self.last_step = None
        self._current = _Process(self)
        logger.info("worker %d started (pid %d)", self.worker_id, self._current.pid)

    def send(self, message: GatewayMessage) -> None:
        """Queue a message for the running process; never blocks. Dropped when no process runs."""
        if self._current is not None:
            self._current.outbox.put(message)

    def kill(self) -> None:
        """SIGKILL the running process (its exit is then reported like any other death)."""
        if self._current is not None:
            self._current.kill()

    async def stop(self, timeout: float) -> int | None:
        """Ask the process to shut down, killing it if it has not exited in `timeout`; return its exit code.

        A process still loading the model is killed at once: it reads the pipe only once loaded, and has no work
        to finish.
        """
        current = self._current
        if current is None:
            return None
        if self.state is WorkerState.STARTING:
            current.kill()
        else:
            current.outbox.put(Shutdown())
        try:
            await asyncio.wait_for(current.exited.wait(), timeout)
        except TimeoutError:
            logger.warning("worker %d did not exit within %.1fs; killing it", self.worker_id, timeout)
            current.kill()
            await current.exited.wait()  # SIGKILL cannot be ignored: the sentinel fires
        return current.exit_code

    # -- called on the loop by the watcher thread ---------------------------------------------------------------

    def call_in_loop(self, callback: Callable[..., None], *args: object) -> None:
        # A closed loop means the gateway is gone and nobody is listening.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def deliver(self, process: _Process, message: WorkerMessage) -> None:
        if process is self._current:
            self._on_message(self, message)

    def handle_exit(self, process: _Process) -> None:
        if process is not self._current:
            return
        self._current = None
        self.model = None
        self.last_exit = describe_exit(process.exit_code)
        if self.failure:
            self.last_exit += f" ({self.failure})"
        process.exited.set()
        self._on_exit(self)
