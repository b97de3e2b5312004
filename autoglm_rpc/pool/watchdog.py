"""Declares a ready worker hung when its serving loop has been silent for `timeout` seconds.

A worker process that stops making progress (SIGSTOP, a wedged CUDA call, a deadlocked collective) does not die,
so nothing else notices it. Every `interval` seconds the watchdog sends each ready worker a `Ping`; the worker's
serving loop answers with a `Pong` between two engine steps, and every message from a worker (a step's output,
a Pong, anything) counts as being heard from it. A ready worker not heard from for `timeout` seconds is hung:
`on_hung` is called once for it (the pool then ends or retries its requests, kills it, and the supervisor
restarts it). An idle worker answers at once, so this also catches a worker that hangs without work.

The timeout must exceed the longest single engine step: one step runs at most `max_num_batched_tokens` of prefill
plus one decode token per running request, which takes milliseconds on a GPU and seconds for a large model on a
CPU; the first steps after loading may also compile or autotune kernels. Loading itself (weights, warm-up,
CUDA-graph capture) happens before the worker is ready and is not watched here: `worker_start_timeout` and the
load progress messages cover it. The default of 120 s leaves a wide margin over all of these.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable

from autoglm_rpc.pool.handle import WorkerHandle
from workers.protocol import Ping

DEFAULT_HANG_TIMEOUT = 120.0


class Watchdog:
    """Runs on the event loop; `heard` is called by the pool for every message a worker sends."""

    def __init__(
        self,
        timeout: float,
        workers: Callable[[], Iterable[WorkerHandle]],
        on_hung: Callable[[WorkerHandle], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"worker_hang_timeout: must be positive to watch, got {timeout}")
        self.timeout = timeout
        self.interval = min(5.0, timeout / 4)  # several pings within one timeout
        self._workers = workers
        self._on_hung = on_hung
        self._clock = clock
        self._last_heard: dict[int, float] = {}
        self._sequence = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def heard(self, worker: WorkerHandle) -> None:
        """The worker sent something: its serving loop (or its loading) is alive now."""
        self._last_heard[worker.worker_id] = self._clock()

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
            if now - last > self.timeout:
                self._on_hung(worker)
            else:
                worker.send(Ping(sequence))
        self.start()
