"""Free against constrained decoding, same prompts: `python -m bench.constrained [--out DIR]`.

The engine runs in this process (as `bench.engine_runner` drives it) over the demo checkpoint, greedy, exactly
`--new-tokens` tokens per request. At each concurrency (default 1 and 16 streams, all submitted at once) it runs
the same prompts twice: free, and constrained by one JSON schema that cannot end within the token budget (an
array of at least 64 short strings), so both runs produce the same number of tokens and the difference is the
cost of the masks (filled on the host thread during the forward) and of applying them. Each kind runs
`--repeats` times, alternating, and the median run is reported: output tokens per second and the mean step
time. It asserts nothing; it writes constrained.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.checkpoints import FIRST_ORDINARY_ID, tiny_checkpoint
from bench.engine_runner import bench_request, start_engine
from bench.machine import describe_machine
from workers.engine.engine import Engine
from workers.protocol import Constraint, ConstraintKind, Submit, WorkerConfig

SCHEMA = {
    "type": "object",
    "properties": {"log": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 64}},
    "required": ["log"],
    "additionalProperties": False,
}
CONSTRAINT = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA))


class MaskClock:
    """Times, per step, the host thread's mask filling and how long sampling waited for it (0: it was hidden
    behind the forward). Wraps the engine's `TokenMasks` from outside; a benchmark's instrument only."""

    def __init__(self, engine: Engine) -> None:
        self.fill_s = self.wait_s = 0.0
        masks = engine.runner.token_masks
        fill, apply = masks._fill, masks.apply

        def timed_fill(*args: Any) -> Any:
            start = time.perf_counter()
            ends = fill(*args)
            self.fill_s += time.perf_counter() - start
            return ends

        def timed_apply(pending: Any, *args: Any) -> torch.Tensor:
            start = time.perf_counter()
            if pending is not None:
                pending.result()
            self.wait_s += time.perf_counter() - start
            return apply(pending, *args)

        masks._fill, masks.apply = timed_fill, timed_apply  # type: ignore[method-assign]

    def reset(self) -> None:
        self.fill_s = self.wait_s = 0.0


def _run(engine: Engine, requests: list[Submit], clock: MaskClock | None = None) -> dict[str, float]:
    if clock is not None:
        clock.reset()
    start = time.perf_counter()
    for request in requests:
        engine.add(request)
    num_steps = num_tokens = 0
    while engine.has_work():
        output = engine.step()
        num_steps += 1
        num_tokens += sum(len(delta.token_ids) for delta in output.deltas)
    if engine.pop_failures():
        raise RuntimeError("a benchmark request failed")
    wall = time.perf_counter() - start
    rates = {"tok_per_s": num_tokens / wall, "step_ms": 1e3 * wall / num_steps}
    if clock is not None:
        rates |= {"mask_fill_ms": 1e3 * clock.fill_s / num_steps, "mask_wait_ms": 1e3 * clock.wait_s / num_steps}
    return {"tokens": num_tokens, "seconds": wall, **rates}


def measure(
    engine: Engine,
    streams: int,
    prompt_len: int,
    new_tokens: int,
    vocab: int,
    *,
    clock: MaskClock,
    repeats: int = 3,
) -> dict[str, Any]:
    rng = random.Random(streams)
    prompts = [[rng.randrange(FIRST_ORDINARY_ID, vocab) for _ in range(prompt_len)] for _ in range(streams)]
    free = [bench_request(f"free-{streams}-{i}", p, new_tokens) for i, p in enumerate(prompts)]
    constrained = [
        Submit(r.request_id.replace("free", "json"), r.prompt_ids, r.sampling, r.stopping, constraint=CONSTRAINT)
        for r in free
    ]
    _run(engine, free)  # warms the shapes of this batch size up, outside the timings
    _run(engine, constrained[:1])  # and compiles the schema once (cached)
    runs: dict[str, list[dict[str, float]]] = {"free": [], "constrained": []}
    for _ in range(repeats):  # alternating, so that drift in a loaded machine hits both alike
        runs["free"].append(_run(engine, free))
        runs["constrained"].append(_run(engine, constrained, clock))
    return {"streams": streams} | {kind: _median(results) for kind, results in runs.items()}


def _median(results: list[dict[str, float]]) -> dict[str, float]:
    """The run of median throughput."""
    return sorted(results, key=lambda r: r["tok_per_s"])[len(results) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/constrained"))
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind per level; the median is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the mask thread is extra)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = tiny_checkpoint(Path(tmp) / "demo")
        config = WorkerConfig(
            worker_id=0,
            model_path=str(checkpoint.path),
            model_id="demo",
            max_batch_size=max(args.streams),
            max_num_batched_tokens=max(512, max(args.streams) * args.prompt_len),
            num_threads=args.threads,
        )
        engine = start_engine(config)
        vocab = checkpoint.token_range[1]
        sizes = (args.prompt_len, args.new_tokens, vocab)
        clock = MaskClock(engine)
        levels = [measure(engine, n, *sizes, clock=clock, repeats=args.repeats) for n in args.streams]
    settings = vars(args) | {"out": str(args.out)}
    result = {"machine": describe_machine(), "schema": SCHEMA, "levels": levels, "settings": settings}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "constrained.json").write_text(json.dumps(result, indent=2))
    columns = ("free tok/s", "json tok/s", "free step ms", "json step ms", "mask fill ms", "mask wait ms")
    print(f"{'streams':>7} " + " ".join(f"{c:>13}" for c in columns))
    for level in levels:
        free, constrained = level["free"], level["constrained"]
        print(
            f"{level['streams']:>7} {free['tok_per_s']:>13.1f} {constrained['tok_per_s']:>13.1f} "
            f"{free['step_ms']:>13.2f} {constrained['step_ms']:>13.2f} "
            f"{constrained['mask_fill_ms']:>13.3f} {constrained['mask_wait_ms']:>13.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
