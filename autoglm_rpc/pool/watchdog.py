"""Declares a ready worker hung when its serving loop has been silent for longer than its timeout.

A worker process that stops making progress (SIGSTOP, a wedged CUDA call, a deadlocked collective) does not die,
so nothing else notices it. Every `interval` seconds the watchdog sends each ready worker a `Ping`; the worker's
serving loop answers with a `Pong` between two engine steps, and every message from a worker (a step's output,
a Pong, anything) counts as being heard from it. A ready worker not heard from for its timeout is hung:
`on_hung` is called once for it (the pool then ends or retries its requests, kills it, and the supervisor
restarts it). An idle worker answers at once, so this also catches a worker that hangs without work.

The timeout must exceed the longest single engine step, which is milliseconds on a GPU and can be tens of seconds
for a large model's prefill on a CPU, so no one number fits (120 s was long for a GPU and short for a slow CPU).
By default it is derived per worker from what that worker does:

    timeout = max(HANG_FLOOR (30 s), HANG_STEP_MULTIPLE (10) x the longest engine step it has run)

Each worker reports its longest step so far with `Ready` (its warm-up, whose prompt fills one step's token
budget, so a full prefill step is measured before it serves), every `StepOutput` and every `Pong`. A worker whose
steps grow longer (long contexts, a busier batch) gets a longer timeout as they do; a restarted worker starts
again from its own warm-up. `worker_hang_timeout` set to a number of seconds overrides the rule for every worker
(0 turns the watchdog off). Loading (weights, warm-up, CUDA-graph capture) happens before the worker is ready and
is not watched here: `worker_start_timeout` and the load progress messages cover it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable

from autoglm_rpc.pool.handle import WorkerHandle
from workers.protocol import Ping

HANG_FLOOR = 30.0  # seconds: the derived timeout is never shorter
HANG_STEP_MULTIPLE = 10.0  # the derived timeout is at least this many of the worker's longest step


class Watchdog:
    """Runs on the event loop; `heard` is called by the pool for every message a worker sends."""

    def __init__(
        self,
        timeout: float | None,
        workers: Callable[[], Iterable[WorkerHandle]],
        on_hung: Callable[[WorkerHandle], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`timeout`: seconds for every worker (the `worker_hang_timeout` override), or None to derive each
        worker's from its longest step (see the module docstring)."""
        if timeout is not None and timeout <= 0:
            raise ValueError(f"worker_hang_timeout: must be positive to watch, got {timeout}")
        self.fixed_timeout = timeout
        self.interval = min(5.0, (timeout or HANG_FLOOR) / 4)  # several pings within one timeout
        self._workers = workers
        self._on_hung = on_hung
        self._clock = clock
        self._last_heard: dict[int, float] = {}
        self._longest_step: dict[int, float] = {}
        self._sequence = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def timeout(self) -> float:
        """The longest timeout in force now, over the workers (the override, when set): what GetServerInfo says."""
        if self.fixed_timeout is not None:
            return self.fixed_timeout
        return max((self.timeout_for(worker) for worker in self._workers()), default=HANG_FLOOR)

    def timeout_for(self, worker: WorkerHandle) -> float:
        """Seconds `worker` may be silent before it is hung."""
        if self.fixed_timeout is not None:
            return self.fixed_timeout
        return max(HANG_FLOOR, HANG_STEP_MULTIPLE * self.longest_step(worker))

    def longest_step(self, worker: WorkerHandle) -> float:
        """Seconds of the longest engine step `worker`'s current process has reported (0 before any report)."""
        return self._longest_step.get(worker.worker_id, 0.0)

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def heard(self, worker: WorkerHandle, longest_step: float | None = None) -> None:
        """The worker sent something: its serving loop (or its loading) is alive now. `longest_step`: what the
        message reports of the process's longest step so far, when it reports it (a new process starts anew)."""
        self._last_heard[worker.worker_id] = self._clock()
        if longest_step is not None:
            self._longest_step[worker.worker_id] = longest_step

    def silent_for(self, worker: WorkerHandle) -> float | None:
        """Seconds since the worker was last heard from; None before its first message."""
        last = self._last_heard.get(worker.worker_id)
        return None if last is None else self._clock() - last

    def _tick(self) -> None:
        now = self._clock()
        sequence = next(self._sequence)
        for worker in self._workers():
            if not worker.is_ready:
                continue
            last = self._last_heard.setdefault(worker.worker_id, now)
            if now - last > self.timeout_for(worker):
                self._on_hung(worker)
            else:
                worker.send(Ping(sequence))
        self.start()
