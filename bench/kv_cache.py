"""The paged KV cache and prefix caching, side by side in one run: `python -m bench.kv_cache [--out DIR]`.

The engine runs in this process (as `bench.engine_runner` drives it: no gateway, no pipe) over the demo
checkpoint, greedy, EOS ignored. Three experiments:

1. Capacity at one KV budget (`--kv-tokens`, default 4,096 tokens, context 2,048): `--capacity-requests`
   requests of 64 prompt + 32 output tokens, all submitted at once. "slotted" is the paged engine configured as the
   slotted layout it replaced behaves: one request per `max_seq_len` of cache, i.e. max_batch_size = budget //
   max_seq_len (2), prefix caching off; "paged" admits by blocks (max_batch_size 64). Reported: the most
   requests running at once, wall time, output tokens per second, mean time to first token.
2. TTFT with a shared 1,500-token prefix: per round a new random prefix; one cold request, then 3 requests with
   the same prefix and a different 16-token question each, one at a time; median TTFT of cold and cached.
3. An agent workload: 16 conversations x 8 turns, all conversations at once, each turn resending the history
   (a 256-token system prompt per conversation, then every message and answer) plus a 48-token message and
   producing 32 tokens. With and without prefix caching: tokens prefilled in all, and the mean TTFT per turn.

It asserts nothing; it writes kv_cache.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.checkpoints import FIRST_ORDINARY_ID, tiny_checkpoint
from bench.engine_runner import bench_request, start_engine
from bench.machine import describe_machine
from workers.engine.engine import Engine
from workers.protocol import Submit, WorkerConfig

logger = logging.getLogger(__name__)


def _config(checkpoint: Path, **overrides: Any) -> WorkerConfig:
    fields: dict[str, Any] = {
        "worker_id": 0, "model_path": str(checkpoint), "model_id": "bench", "max_seq_len": 2048,
        "max_batch_size": 64, "max_num_batched_tokens": 512, "kv_cache_tokens": 65536, "num_threads": None,
    }  # fmt: skip
    fields.update(overrides)
    return WorkerConfig(**fields)


class Prompts:
    """Random prompt ids the model accepts, reproducible from a seed."""

    def __init__(self, vocab: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.vocab = vocab

    def __call__(self, length: int) -> list[int]:
        return [self.rng.randrange(FIRST_ORDINARY_ID, self.vocab) for _ in range(length)]


def _drive(engine: Engine, on_token=None, on_finish=None) -> None:
    """Step until idle; `on_token(request_id, now)` per delta with tokens, `on_finish(delta, now)` per finish."""
    while engine.has_work():
        output = engine.step()
        now = time.perf_counter()
        for delta in output.deltas:
            if delta.token_ids and on_token:
                on_token(delta, now)
            if delta.finish is not None and on_finish:
                on_finish(delta, now)
        failures = engine.pop_failures()
        if failures:
            raise RuntimeError(f"request {failures[0].request_id} failed: {failures[0].message}")


def capacity(checkpoint: Path, prompts: Prompts, kv_tokens: int, num_requests: int) -> dict[str, Any]:
    results = {}
    max_seq_len = 2048
    for name, batch in (("slotted", kv_tokens // max_seq_len), ("paged", 64)):
        config = _config(
            checkpoint, kv_cache_tokens=kv_tokens, max_seq_len=max_seq_len, max_batch_size=batch,
            enable_prefix_caching=False,
        )  # fmt: skip
        engine = start_engine(config)
        sent, first = {}, {}
        start = time.perf_counter()
        for i in range(num_requests):
            sent[f"c{i}"] = time.perf_counter()
            engine.add(bench_request(f"c{i}", prompts(64), 32))
        peak = 0
        while engine.has_work():
            output = engine.step()
            now = time.perf_counter()
            peak = max(peak, output.num_running)
            for delta in output.deltas:
                first.setdefault(delta.request_id, now)
        elapsed = time.perf_counter() - start
        results[name] = {
            "max_batch_size": batch, "peak_running": peak, "seconds": elapsed,
            "output_tokens_per_s": num_requests * 32 / elapsed,
            "mean_ttft_s": statistics.mean(first[r] - sent[r] for r in sent),
        }  # fmt: skip
        logger.info("capacity %s: %s", name, results[name])
        del engine
    return {"kv_tokens": kv_tokens, "max_seq_len": max_seq_len, "requests": num_requests, **results}


def _ttft(engine: Engine, submit: Submit) -> float:
    start = time.perf_counter()
    first: list[float] = []
    engine.add(submit)
    _drive(engine, on_token=lambda delta, now: first.append(now) if not first else None)
    return first[0] - start


def shared_prefix(checkpoint: Path, prompts: Prompts, rounds: int) -> dict[str, Any]:
    engine = start_engine(_config(checkpoint))
    cold, cached = [], []
    for r in range(rounds):
        prefix = prompts(1500)
        cold.append(_ttft(engine, bench_request(f"cold{r}", prefix + prompts(16), 1)))
        for q in range(3):
            cached.append(_ttft(engine, bench_request(f"hit{r}-{q}", prefix + prompts(16), 1)))
    return {
        "prefix_tokens": 1500, "question_tokens": 16, "rounds": rounds,
        "cold_ttft_s": statistics.median(cold), "cached_ttft_s": statistics.median(cached),
        "cached_prompt_tokens": engine.scheduler.stats.num_cached_tokens,
    }  # fmt: skip


def agent(checkpoint: Path, seed: int, prefix_caching: bool, conversations: int = 16, turns: int = 8):
    prompts = Prompts(_vocab(checkpoint), seed)
    engine = start_engine(_config(checkpoint, enable_prefix_caching=prefix_caching))
    stats = engine.scheduler.stats
    base_prompt, base_cached = stats.num_prompt_tokens, stats.num_cached_tokens
    history = {c: prompts(256) for c in range(conversations)}
    turn_of = dict.fromkeys(history, 0)
    sent: dict[str, float] = {}
    ttft: dict[int, list[float]] = {t: [] for t in range(turns)}
    answers: dict[str, list[int]] = {}

    def send(c: int) -> None:
        history[c] += prompts(48)
        request_id = f"a{c}-{turn_of[c]}"
        sent[request_id] = time.perf_counter()
        answers[request_id] = []
        engine.add(bench_request(request_id, history[c], 32))

    def on_token(delta, now: float) -> None:
        if not answers[delta.request_id]:
            turn = int(delta.request_id.split("-")[1])
            ttft[turn].append(now - sent[delta.request_id])
        answers[delta.request_id].extend(delta.token_ids)

    def on_finish(delta, now: float) -> None:
        c = int(delta.request_id[1:].split("-")[0])
        history[c] += answers[delta.request_id]
        turn_of[c] += 1
        if turn_of[c] < turns:
            send(c)

    start = time.perf_counter()
    for c in history:
        send(c)
    _drive(engine, on_token, on_finish)
    prompt_tokens = stats.num_prompt_tokens - base_prompt
    cached = stats.num_cached_tokens - base_cached
    return {
        "prefix_caching": prefix_caching, "conversations": conversations, "seconds": time.perf_counter() - start,
        "prompt_tokens": prompt_tokens, "prefilled_tokens": prompt_tokens - cached, "cached_tokens": cached,
        "mean_ttft_s_per_turn": [statistics.mean(ttft[t]) for t in range(turns)],
    }  # fmt: skip


def _vocab(checkpoint: Path) -> int:
    from bench.checkpoints import existing_checkpoint

    return existing_checkpoint(checkpoint).token_range[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kv_cache", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/kv-cache"), help="results directory")
    parser.add_argument("--kv-tokens", type=int, default=4096, help="the KV budget of the capacity experiment")
    parser.add_argument("--capacity-requests", type=int, default=64, help="requests of the capacity experiment")
    parser.add_argument("--prefix-rounds", type=int, default=3, help="rounds of the shared-prefix experiment")
    parser.add_argument("--conversations", type=int, default=16, help="conversations of the agent workload")
    parser.add_argument("--turns", type=int, default=8, help="turns per conversation of the agent workload")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = tiny_checkpoint(Path(directory) / "demo").path
        prompts = Prompts(_vocab(checkpoint), args.seed)
        report = {
            "machine": describe_machine(),
            "checkpoint": (
                "demo (workers.model.checkpoints.DEMO_SPEC: 4-layer GLM, hidden 256, 2 KV heads), float32"
            ),
            "capacity": capacity(checkpoint, prompts, args.kv_tokens, args.capacity_requests),
            "shared_prefix": shared_prefix(checkpoint, prompts, args.prefix_rounds),
            "agent": [
                agent(checkpoint, args.seed, caching, args.conversations, args.turns) for caching in (False, True)
            ],
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kv_cache.json").write_text(json.dumps(report, indent=2))
    print(render(report))
    return 0


def render(report: dict[str, Any]) -> str:
    """The report as Markdown tables, as docs/performance.md shows them."""
    cap = report["capacity"]
    lines = [
        f"Capacity, {cap['requests']} requests (64 prompt + 32 output tokens) at a KV budget of "
        f"{cap['kv_tokens']} tokens, context {cap['max_seq_len']}:",
        "",
        "| layout | max running | most running at once | wall s | output tok/s | mean TTFT s |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("slotted", "paged"):
        row = cap[name]
        lines.append(
            f"| {name} | {row['max_batch_size']} | {row['peak_running']} | {row['seconds']:.1f} | "
            f"{row['output_tokens_per_s']:.0f} | {row['mean_ttft_s']:.2f} |"
        )
    prefix = report["shared_prefix"]
    lines += [
        "",
        f"TTFT with a shared {prefix['prefix_tokens']}-token prefix (median of {prefix['rounds']} cold and "
        f"{3 * prefix['rounds']} cached): cold {1000 * prefix['cold_ttft_s']:.0f} ms, cached "
        f"{1000 * prefix['cached_ttft_s']:.0f} ms.",
        "",
        f"Agent workload, {report['agent'][0]['conversations']} conversations x "
        f"{len(report['agent'][0]['mean_ttft_s_per_turn'])} turns:",
        "",
        "| prefix caching | prompt tokens | prefilled | wall s | mean TTFT per turn, first to last (ms) |",
        "|---|---|---|---|---|",
    ]
    for row in report["agent"]:
        per_turn = " / ".join(f"{1000 * t:.0f}" for t in row["mean_ttft_s_per_turn"])
        lines.append(
            f"| {'on' if row['prefix_caching'] else 'off'} | {row['prompt_tokens']} | {row['prefilled_tokens']} | "
            f"{row['seconds']:.1f} | {per_turn} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
