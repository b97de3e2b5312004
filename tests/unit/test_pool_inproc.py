"""The pool's admission, routing, retry-once and draining, fast: real engines in threads of this process
(`tests.inproc_worker`), swapped in for the worker processes, with the faults the double injects."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from autoglm_rpc.core.config_sections import CheckpointSettings, PoolSettings
from autoglm_rpc.core.errors import PromptTooLong, QueueFull, ServerDraining, WorkerCrashed
from autoglm_rpc.core.frontend import Frontend
from autoglm_rpc.core.requests import GenerationRequest, StopRequest, TokenPrompt
from autoglm_rpc.pool import pool as pool_module
from autoglm_rpc.pool.handle import WorkerState
from autoglm_rpc.pool.pool import InFlight, WorkerPool
from autoglm_rpc.startup.server import load_served_model
from tests.inproc_worker import Faults, InProcessWorkerHandle
from tests.workers.factories import make_submit, random_prompt
from workers.protocol import RequestDelta, WorkerConfig

TIMEOUT = 120.0


def _configs(checkpoint: Path, count: int, kv_cache_tokens: int | None = None) -> list[WorkerConfig]:
    return [
        WorkerConfig(
            worker_id=index,
            model_path=str(checkpoint),
            model_id="tiny",
            device="cpu",
            max_batch_size=1,
            max_seq_len=256,
            max_num_batched_tokens=64,
            kv_cache_tokens=kv_cache_tokens,
        )
        for index in range(count)
    ]


def _run(
    monkeypatch: pytest.MonkeyPatch,
    checkpoint: Path,
    scenario: Callable[[WorkerPool], Awaitable[None]],
    *,
    workers: int = 2,
    faults: Faults | None = None,
    max_queue_depth: int = 0,
    max_restarts: int = 5,
    kv_cache_tokens: int | None = None,
) -> None:
    monkeypatch.setattr(pool_module, "WorkerHandle", functools.partial(InProcessWorkerHandle, faults=faults))

    async def main() -> None:
        settings = PoolSettings(
            max_queue_depth=max_queue_depth,
            restart_backoff_initial=0.05,
            restart_backoff_max=0.1,
            max_restarts_per_window=max_restarts,
            restart_window=60.0,
            worker_hang_timeout=0.0,
        )
        pool = WorkerPool(_configs(checkpoint, workers, kv_cache_tokens), settings)
        pool.start()
        try:
            async with asyncio.timeout(TIMEOUT):
                await _until(pool, lambda: all(w.state is not WorkerState.STARTING for w in pool.workers))
                await scenario(pool)
        finally:
            await pool.stop(10.0)

    asyncio.run(main())


async def _until(pool: WorkerPool, condition: Callable[[], bool]) -> None:
    """Wait for `condition`, checked whenever the pool says a worker's state changed."""
    changed = asyncio.Event()
    pool.add_listener(changed.set)
    while not condition():
        changed.clear()
        await changed.wait()


async def _tokens(flight: InFlight) -> list[int]:
    """Every token of the request, to its end; raises the error event if it failed."""
    tokens: list[int] = []
    while True:
        event = await flight.events.get_merged()
        if not isinstance(event, RequestDelta):
            raise event  # type: ignore[misc]
        tokens.extend(event.token_ids)
        if event.finish is not None:
            return tokens


def _submit(pool: WorkerPool, request_id: str, max_new_tokens: int = 6) -> InFlight:
    return pool.submit(make_submit(request_id, random_prompt(8, seed=len(request_id)), max_new_tokens))


def test_routing_to_the_least_loaded_and_admission_to_capacity(
    monkeypatch: pytest.MonkeyPatch, glm_checkpoint: Path
) -> None:
    async def scenario(pool: WorkerPool) -> None:
        first, second = _submit(pool, "a", 40), _submit(pool, "b", 40)
        assert {first.worker.worker_id, second.worker.worker_id} == {0, 1}
        with pytest.raises(QueueFull):  # one slot per worker, no queue: capacity two
            _submit(pool, "c")
        assert [len(await _tokens(f)) for f in (first, second)] == [40, 40]
        assert pool.num_in_flight == 0
        assert len(await _tokens(_submit(pool, "c"))) == 6

    _run(monkeypatch, glm_checkpoint, scenario)


def test_a_request_whose_worker_dies_before_its_first_token_is_retried_once(
    monkeypatch: pytest.MonkeyPatch, glm_checkpoint: Path
) -> None:
    async def scenario(pool: WorkerPool) -> None:
        flight = _submit(pool, "retried")
        assert flight.worker.worker_id == 0  # both idle: the first worker
        assert len(await _tokens(flight)) == 6  # served by worker 1
        assert pool.num_retried == 1 and flight.worker.worker_id == 1
        crashed = pool.workers[0]
        assert crashed.last_exit == "killed by signal SIGSEGV"
        await _until(pool, lambda: crashed.is_ready)  # the supervisor restarted it
        assert crashed.num_restarts == 1

    _run(monkeypatch, glm_checkpoint, scenario, faults=Faults(crash_on_submit=frozenset({0})))


def test_only_once(monkeypatch: pytest.MonkeyPatch, glm_checkpoint: Path) -> None:
    async def scenario(pool: WorkerPool) -> None:
        with pytest.raises(WorkerCrashed):
            await _tokens(_submit(pool, "doomed"))
        assert pool.num_retried == 1

    _run(monkeypatch, glm_checkpoint, scenario, faults=Faults(crash_on_submit=frozenset({0, 1})))


def test_draining_refuses_new_requests_and_finishes_those_in_flight(
    monkeypatch: pytest.MonkeyPatch, glm_checkpoint: Path
) -> None:
    async def scenario(pool: WorkerPool) -> None:
        running = _submit(pool, "running", 20)
        pool.start_draining()
        assert not pool.is_serving
        with pytest.raises(ServerDraining):
            _submit(pool, "late")
        assert len(await _tokens(running)) == 20

    _run(monkeypatch, glm_checkpoint, scenario, workers=1, max_queue_depth=1)


def test_a_worker_that_fails_at_load_is_a_crash_loop_while_the_other_serves(
    monkeypatch: pytest.MonkeyPatch, glm_checkpoint: Path
) -> None:
    async def scenario(pool: WorkerPool) -> None:
        broken = pool.workers[1]
        await _until(pool, lambda: broken.state is WorkerState.CRASH_LOOP)
        assert broken.last_exit.startswith("exit code 1 (MemoryError") and broken.num_restarts == 1
        assert pool.num_ready == 1 and pool.is_serving
        assert len(await _tokens(_submit(pool, "served"))) == 6

    _run(monkeypatch, glm_checkpoint, scenario, faults=Faults(fail_at_load=frozenset({1})), max_restarts=1)


def test_the_edge_checks_the_fit_against_the_workers_context(
    monkeypatch: pytest.MonkeyPatch, glm_checkpoint: Path
) -> None:
    """A KV cache of 64 tokens lowers the worker's context from 256 to 64: the front end refuses what does not
    fit in 64 before routing it, naming that limit, and reports 64 as the context (Tokenize, ListModels,
    /v1/models)."""

    async def scenario(pool: WorkerPool) -> None:
        served = load_served_model(CheckpointSettings(model=str(glm_checkpoint), max_seq_len=256))
        frontend = Frontend(served, pool)
        assert (served.max_context_tokens, frontend.max_context_tokens) == (256, 64)
        too_long = GenerationRequest(prompt=TokenPrompt(ids=tuple(range(1, 101))))
        with pytest.raises(PromptTooLong, match="context limit is 64"):
            await anext(frontend.generate(too_long))
        over = GenerationRequest(prompt=TokenPrompt(ids=(1, 2, 3)), stopping=StopRequest(max_new_tokens=100))
        with pytest.raises(PromptTooLong, match="over the context limit of 64"):
            await anext(frontend.generate(over))
        fits = GenerationRequest(prompt=TokenPrompt(ids=(1, 2, 3)), stopping=StopRequest(max_new_tokens=4))
        events = [event async for event in frontend.generate(fits)]
        assert len(events[-1].token_ids) == 4

    _run(monkeypatch, glm_checkpoint, scenario, workers=1, kv_cache_tokens=64)
