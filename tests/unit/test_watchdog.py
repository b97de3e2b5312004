"""The watchdog's policy without processes: a ready worker heard from recently is left alone, one silent past
the timeout is reported hung, and workers that are not ready are not watched. The timeout: derived per worker
from its longest step, or set."""

from __future__ import annotations

import asyncio

import pytest

from autoglm_rpc.pool.handle import WorkerHandle, WorkerState
from autoglm_rpc.pool.watchdog import HANG_FLOOR, Watchdog
from workers.protocol import WorkerConfig


def _ready_workers(loop: asyncio.AbstractEventLoop) -> list[WorkerHandle]:
    """Two worker handles with no process, both READY."""
    workers = [WorkerHandle(WorkerConfig(i, "/m", "m"), loop, lambda *_: None, lambda *_: None) for i in (0, 1)]
    for worker in workers:
        worker.state = WorkerState.READY
    return workers


def test_silence_past_the_timeout_is_a_hang() -> None:
    async def scenario() -> None:
        now = [0.0]
        loop = asyncio.get_running_loop()
        workers = _ready_workers(loop)
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


def test_the_timeout_is_derived_from_each_workers_longest_step() -> None:
    """By default: max(30 s, 10 x the worker's longest step), as each message reports it; a slow step (injected
    here as what the worker reports) lengthens that worker's timeout alone."""

    async def scenario() -> None:
        now = [0.0]
        loop = asyncio.get_running_loop()
        workers = _ready_workers(loop)
        hung: list[int] = []
        watchdog = Watchdog(None, lambda: workers, lambda w: hung.append(w.worker_id), clock=lambda: now[0])
        assert watchdog.interval == 5.0 and watchdog.timeout == HANG_FLOOR == 30.0
        watchdog.heard(workers[0], longest_step=0.004)  # a GPU's step: the floor applies
        watchdog.heard(workers[1], longest_step=0.004)
        watchdog.heard(workers[1], longest_step=12.0)  # a long CPU prefill: 10 x 12 s
        assert [watchdog.timeout_for(w) for w in workers] == [30.0, 120.0]
        assert watchdog.timeout == 120.0
        now[0] = 31.0
        watchdog._tick()
        assert hung == [0]  # silent past its 30 s; worker 1 may be in a step as long as those it has run
        workers[0].state = WorkerState.HUNG
        now[0] = 119.0
        watchdog._tick()
        assert hung == [0]
        now[0] = 121.0
        watchdog._tick()
        assert hung == [0, 1]
        watchdog.heard(workers[1], longest_step=0.5)  # a restarted process reports its own steps again
        assert watchdog.timeout_for(workers[1]) == 30.0
        watchdog.stop()

    asyncio.run(scenario())


def test_a_set_timeout_overrides_the_rule() -> None:
    watchdog = Watchdog(4.0, list, lambda w: None)
    worker = WorkerHandle(WorkerConfig(0, "/m", "m"), None, lambda *_: None, lambda *_: None)  # type: ignore[arg-type]
    watchdog.heard(worker, longest_step=60.0)
    assert watchdog.timeout_for(worker) == watchdog.timeout == 4.0 and watchdog.interval == 1.0
