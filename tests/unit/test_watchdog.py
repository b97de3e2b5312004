"""The watchdog's policy without processes: a ready worker heard from recently is left alone, one silent past
the timeout is reported hung, and workers that are not ready are not watched."""

from __future__ import annotations

import asyncio

import pytest

from autoglm_rpc.pool.handle import WorkerHandle, WorkerState
from autoglm_rpc.pool.watchdog import Watchdog
from workers.protocol import WorkerConfig


def test_silence_past_the_timeout_is_a_hang() -> None:
    async def scenario() -> None:
        now = [0.0]
        loop = asyncio.get_running_loop()
        workers = [
            WorkerHandle(WorkerConfig(i, "/m", "m"), loop, lambda *_: None, lambda *_: None) for i in (0, 1)
        ]
        for worker in workers:
            worker.state = WorkerState.READY
        hung: list[int] = []
        watchdog = Watchdog(10.0, lambda: workers, lambda w: hung.append(w.worker_id), clock=lambda: now[0])
        assert watchdog.interval == 2.5
        for worker in workers:
            watchdog.heard(worker)
        now[0] = 9.0
        watchdog.heard(workers[1])
        watchdog._tick()
        assert hung == [] and watchdog.silent_for(workers[0]) == 9.0
        now[0] = 10.5
        workers[1].state = WorkerState.STARTING  # loading: not watched, however long it is silent
        watchdog._tick()
        assert hung == [0]
        now[0] = 100.0
        workers[0].state = WorkerState.HUNG
        watchdog._tick()
        assert hung == [0]
        watchdog.stop()

    asyncio.run(scenario())


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="worker_hang_timeout"):
        Watchdog(0.0, list, lambda w: None)
