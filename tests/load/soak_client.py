"""The soak test's load generator: a separate process that keeps N streams busy against one server.

    python -m tests.load.soak_client --target 127.0.0.1:50051 --streams 64 --duration 180

Each of the N tasks sends one request after another until the duration is over: mostly streams, some unary calls,
and a few streams it cancels itself after a few messages. Every call has a deadline, so a call that hangs ends
as DEADLINE_EXCEEDED and is counted as hung. A refused call (QUEUE_FULL) waits for its RetryInfo delay before the
task's next request; NO_READY_WORKER waits half a second. The counts are printed as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import grpc

from autoglm_rpc.client import AsyncClient, AutoglmError

# Prompts are a few words drawn from this text, as real traffic reuses a vocabulary. (Unique random strings would
# fill the tokenizer's bounded word cache, about 10,000 entries, for the first few minutes: growth that stops, but
# would blur the memory check.)
_TEXT = """the quick brown fox jumps over a lazy dog while gateways route requests to workers over pipes and
continuous batching lets requests join or leave the running batch at every step tokens stream back to callers
as soon as they are sampled a stream ends with its finish reason usage and timing servers drain on shutdown
workers restart after a crash and overload is refused with a hint to retry later"""
WORDS = tuple(_TEXT.split())
# The statuses a caller may see under load and faults, as the contract documents them: anything else is a failure.
EXPECTED = {"OK", "CANCELLED_BY_CLIENT", "RESOURCE_EXHAUSTED/QUEUE_FULL", "UNAVAILABLE/WORKER_CRASHED"}
EXPECTED |= {"UNAVAILABLE/NO_READY_WORKER"}


@dataclass
class Tally:
    """What the load generator saw; `outcomes` maps "OK" or "CODE/REASON" to a count."""

    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    tokens: int = 0
    short_streams: int = 0  # an OK stream whose token count disagrees with its usage
    max_call_seconds: float = 0.0

    def add(self, outcome: str, seconds: float) -> None:
        self.outcomes[outcome] += 1
        self.max_call_seconds = max(self.max_call_seconds, seconds)


def _prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))


async def _stream(client: AsyncClient, rng: random.Random, deadline: float, tally: Tally) -> str:
    max_new_tokens = rng.randint(8, 96)
    cancel_after = rng.randint(2, 6) if rng.random() < 0.05 else None
    received, last = 0, None
    stream = client.stream(_prompt(rng), max_new_tokens=max_new_tokens, return_token_ids=True, timeout=deadline)
    async for message in stream:
        received += len(message.token_ids)
        last = message
        if cancel_after is not None and received >= cancel_after:
            await stream.aclose()  # the client goes away mid-stream
            return "CANCELLED_BY_CLIENT"
    if last is None or not last.finish_reason or last.usage.completion_tokens != received:
        tally.short_streams += 1
    tally.tokens += received
    return "OK"


async def _unary(client: AsyncClient, rng: random.Random, deadline: float, tally: Tally) -> str:
    result = await client.generate(_prompt(rng), max_new_tokens=rng.randint(8, 64), timeout=deadline)
    tally.tokens += result.usage.completion_tokens
    return "OK"


async def _task(client: AsyncClient, index: int, end: float, deadline: float, tally: Tally) -> None:
    rng = random.Random(index)
    while time.monotonic() < end:
        started = time.monotonic()
        pause = 0.0
        try:
            call = _unary if rng.random() < 0.2 else _stream
            outcome = await call(client, rng, deadline, tally)
        except AutoglmError as error:
            outcome = f"{error.code.name}/{error.reason}" if error.reason else error.code.name
            if error.reason == "QUEUE_FULL":
                pause = (error.retry_after or 1.0) * rng.uniform(0.5, 1.5)
            elif error.code == grpc.StatusCode.UNAVAILABLE:
                pause = 0.5
        tally.add(outcome, time.monotonic() - started)
        if pause:
            await asyncio.sleep(pause)


async def run(target: str, num_streams: int, duration: float, deadline: float) -> Tally:
    """Keep `num_streams` tasks busy for `duration` seconds; each call is bounded by `deadline` seconds."""
    tally = Tally()
    end = time.monotonic() + duration
    async with AsyncClient(target) as client:
        tasks = [asyncio.create_task(_task(client, i, end, deadline, tally)) for i in range(num_streams)]
        # A task ends its last call by its deadline at the latest; past that, what is left is hung.
        _, pending = await asyncio.wait(tasks, timeout=duration + deadline + 30)
        for task in pending:
            task.cancel()
        if pending:
            tally.outcomes["HUNG_TASK"] += len(pending)
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--duration", type=float, default=180.0)
    parser.add_argument("--deadline", type=float, default=60.0, help="deadline of every call, seconds")
    args = parser.parse_args()
    tally = asyncio.run(run(args.target, args.streams, args.duration, args.deadline))
    json.dump(asdict(tally) | {"outcomes": dict(tally.outcomes)}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
