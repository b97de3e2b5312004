"""The engine in this process, driven the way the worker drives it (`workers.process.worker`), with no gateway or
pipe.

The model is loaded, wrapped by `Engine.from_loaded` and warmed up by `workers.process.load.start_engine`, as in
a worker. A level keeps `concurrency` requests in flight (closed loop: a finished request's place is taken
by the next one at once), steps until every request is done, and timestamps each step's tokens when `step()`
returns. This is the engine's own throughput, the figure the service is compared against.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from bench.stats import LevelResult, RequestTiming, summarize
from bench.workload import Workload
from workers.engine.engine import Engine
from workers.process import load
from workers.protocol import SamplingParams, StoppingParams, Submit, WorkerConfig

logger = logging.getLogger(__name__)


def start_engine(config: WorkerConfig) -> Engine:
    """Load the model and warm the engine up, as `workers.process.worker` does before it reports Ready."""
    engine, _ = load.start_engine(
        config, lambda stage, fraction: logger.debug("engine: %s (%.0f%%)", stage, 100 * fraction)
    )
    return engine


def bench_request(request_id: str, prompt: list[int], new_tokens: int) -> Submit:
    """Greedy, EOS ignored, exactly `new_tokens` tokens."""
    stopping = StoppingParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens, ignore_eos=True)
    return Submit(request_id=request_id, prompt_ids=tuple(prompt), sampling=SamplingParams(), stopping=stopping)


def run_engine_level(engine: Engine, workload: Workload, concurrency: int) -> LevelResult:
    """Run one level: `requests_for_level(concurrency)` requests, `concurrency` in flight at a time."""
    prompts = deque(enumerate(workload.prompts(workload.requests_for_level(concurrency))))
    timings: dict[str, RequestTiming] = {}

    def submit_next() -> None:
        index, prompt = prompts.popleft()
        request_id = f"engine-{concurrency}-{index}"
        timings[request_id] = RequestTiming(time.perf_counter())
        engine.add(bench_request(request_id, prompt, workload.new_tokens))

    start = time.perf_counter()
    for _ in range(min(concurrency, len(prompts))):
        submit_next()
    while engine.has_work():
        output = engine.step()
        now = time.perf_counter()
        for delta in output.deltas:
            timings[delta.request_id].token_times.extend([now] * len(delta.token_ids))
            if delta.finish is not None and prompts:
                submit_next()
        failures = engine.pop_failures()
        if failures:
            raise RuntimeError(f"the engine failed request {failures[0].request_id}: {failures[0].message}")
    return summarize("engine", concurrency, timings.values(), time.perf_counter() - start, "engine in process")
