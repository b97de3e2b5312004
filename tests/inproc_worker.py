"""An in-process worker handle: the real worker loop (`workers.process.worker.run_worker`, the engine and its
model) in a thread of this process, behind the same interface as the process handle
(`autoglm_rpc.pool.handle.WorkerHandle`), as vLLM's in-process client stands in for its multiprocess one.

It lives with the tests because the gateway package never imports the engine (torch). Swapped in for
`WorkerHandle` (see `inproc_pool`), it lets the pool's admission, routing, retry-once and draining be tested
in seconds, with real tokens and no spawned interpreter. It also carries the faults those tests inject, as the
double's own behaviour rather than a path in the worker loop: `crash_on_submit` dies (an exit reported as
SIGSEGV) instead of delivering its first request; `fail_at_load` reports `WorkerFailed` and exits 1 instead of
loading.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection

from autoglm_rpc.pool.handle import WorkerHandle, WorkerState
from workers.protocol import (
    GatewayMessage,
    Shutdown,
    Submit,
    WorkerConfig,
    WorkerFailed,
    WorkerMessage,
)


@dataclass
class Faults:
    """What a worker slot does wrong, by worker id; each fault fires in every process (thread) of its slot."""

    crash_on_submit: frozenset[int] = frozenset()
    fail_at_load: frozenset[int] = frozenset()


class _Thread:
    """One run of the worker loop: a thread, its end of a pipe, and a reader thread delivering to the loop."""

    def __init__(self, handle: InProcessWorkerHandle) -> None:
        self.conn, child = Pipe(duplex=True)
        self.exit_code: int | None = None
        self.exited = asyncio.Event()
        self._child = child
        self._handle = handle
        self._worker = threading.Thread(target=self._run, name=f"inproc-worker-{handle.worker_id}", daemon=True)
        self._worker.start()
        threading.Thread(target=self._read, name=f"inproc-reader-{handle.worker_id}", daemon=True).start()

    def _run(self) -> None:
        from workers.process.worker import run_worker  # torch: only once a test starts a worker

        handle = self._handle
        if handle.worker_id in handle.faults.fail_at_load:
            self._child.send(WorkerFailed(handle.worker_id, "MemoryError: injected at load"))
            code = 1
        else:
            code = run_worker(self._child, handle.config)
        if self.exit_code is None:
            self.exit_code = code
        _shut(self._child)  # as a process's exit closes its pipe: the reader sees end-of-file

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            self._handle.call_in_loop(self._handle.deliver, self, message)
        self._worker.join(60)
        self._handle.call_in_loop(self._handle.handle_exit, self)

    def die(self, exit_code: int) -> None:
        """End this run as a crash would: the pipe goes away at once and the exit is reported with `exit_code`.

        The worker's end is shut down (not just closed), which wakes every thread blocked reading either end.
        """
        self.exit_code = exit_code
        _shut(self._child)


def _shut(conn: Connection) -> None:
    """Shut the socket under `conn` down: unlike close(), this wakes threads blocked reading either end."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(conn.fileno())) as end:
        end.shutdown(socket.SHUT_RDWR)


class InProcessWorkerHandle(WorkerHandle):
    """`WorkerHandle` over a thread running the worker loop: the state, callbacks and exit reporting are the
    process handle's own; only how a run starts, is sent to, and ends differs. Methods run on the event loop."""

    def __init__(
        self,
        config: WorkerConfig,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[WorkerHandle, WorkerMessage], None],
        on_exit: Callable[[WorkerHandle], None],
        faults: Faults | None = None,
    ) -> None:
        super().__init__(config, loop, on_message, on_exit)
        self.faults = faults or Faults()
        self._current: _Thread | None = None  # a thread stands in for the process

    @property
    def pid(self) -> int | None:
        return None  # no process of its own

    def start(self) -> None:
        if self._current is not None:
            raise RuntimeError(f"worker {self.worker_id} already runs")
        self.state, self.model, self.failure = WorkerState.STARTING, None, ""
        self.failure_will_repeat, self.last_step = False, None
        self._current = _Thread(self)

    def send(self, message: GatewayMessage) -> None:
        current = self._current
        if current is None:
            return
        if isinstance(message, Submit) and self.worker_id in self.faults.crash_on_submit:
            current.die(-signal.SIGSEGV)
            return
        with contextlib.suppress(OSError):
            current.conn.send(message)

    def kill(self) -> None:
        if self._current is not None:
            self._current.die(-signal.SIGKILL)

    async def stop(self, timeout: float) -> int | None:
        current = self._current
        if current is None:
            return None
        self.send(Shutdown())
        try:
            await asyncio.wait_for(current.exited.wait(), timeout)
        except TimeoutError:
            current.die(-signal.SIGKILL)
            await current.exited.wait()
        return current.exit_code
