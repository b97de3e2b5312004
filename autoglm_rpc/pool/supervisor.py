"""Restarts workers that die, with exponential backoff, and stops restarting one that is in a crash loop.

Policy: every death of a worker process (killed, segfault, CUDA error, out of memory, a load that fails) counts as
a crash at that moment. Crashes older than `window` seconds are forgotten. After the n-th crash within the window
the worker is restarted after `backoff_initial * 2**(n-1)` seconds, at most `backoff_max`; once more than
`max_restarts` crashes fall within the window, the worker is in a crash loop: it is logged as an error, shown as
CRASH_LOOP in GetServerInfo, and not restarted again (an operator must look; spinning would only burn the GPU
and fill the log). `max_restarts` 0 turns restarts off. A worker that crashes rarely therefore always comes
back after `backoff_initial`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from autoglm_rpc.core.config_sections import PoolSettings
from autoglm_rpc.pool.handle import WorkerHandle, WorkerState

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to restart a dead worker; see the module docstring."""

    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    max_restarts: int = 5
    window: float = 300.0

    @classmethod
    def from_settings(cls, settings: PoolSettings) -> RestartPolicy:
        """The policy the `pool` section's restart_* and max_restarts_per_window settings describe."""
        return cls(
            backoff_initial=settings.restart_backoff_initial,
            backoff_max=settings.restart_backoff_max,
            max_restarts=settings.max_restarts_per_window,
            window=settings.restart_window,
        )

    def delay(self, num_recent_crashes: int) -> float | None:
        """Seconds to wait before the restart after this many crashes within the window; None: crash loop."""
        if num_recent_crashes > self.max_restarts:
            return None
        return min(self.backoff_max, self.backoff_initial * 2 ** max(0, num_recent_crashes - 1))


class Supervisor:
    """Decides, after a worker dies, whether and when it starts again. Runs on the event loop."""

    def __init__(
        self,
        policy: RestartPolicy,
        on_restart: Callable[[WorkerHandle], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._on_restart = on_restart
        self._clock = clock
        self._crashes: dict[int, collections.deque[float]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def worker_died(self, worker: WorkerHandle) -> None:
        """Record the crash; set the worker RESTARTING (a restart is scheduled) or CRASH_LOOP."""
        now = self._clock()
        crashes = self._crashes.setdefault(worker.worker_id, collections.deque())
        crashes.append(now)
        while crashes[0] < now - self.policy.window:
            crashes.popleft()
        delay = self.policy.delay(len(crashes))
        if delay is None:
            worker.state = WorkerState.CRASH_LOOP
            logger.error(
                "worker %d died %d times within %.0fs (last: %s); crash loop: it is not restarted",
                worker.worker_id, len(crashes), self.policy.window, worker.last_exit,
            )  # fmt: skip
            return
        worker.state = WorkerState.RESTARTING
        logger.warning("worker %d: restarting in %.1fs (%s)", worker.worker_id, delay, worker.last_exit)
        self._timers[worker.worker_id] = asyncio.get_running_loop().call_later(delay, self._restart, worker)

    def cancel(self) -> None:
        """Drop every scheduled restart (the pool is stopping)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _restart(self, worker: WorkerHandle) -> None:
        self._timers.pop(worker.worker_id, None)
        if worker.state is not WorkerState.RESTARTING:
            return
        worker.num_restarts += 1
        logger.info("worker %d: restart %d", worker.worker_id, worker.num_restarts)
        self._on_restart(worker)
