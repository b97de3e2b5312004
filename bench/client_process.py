"""A client subprocess of a service benchmark: `python -m bench.client_process SPEC_JSON`.

The spec names the target, the workload, the level's concurrency for this process and the slice of the level's
requests it owns. The process connects, waits for readiness, sends one short warm-up stream, prints `ready`,
waits for a line on stdin (so that every client process of a level starts together), then keeps its streams
busy (closed loop) with `AsyncClient.stream` until its requests are done. It prints one JSON line: the
`time.monotonic()` start and end (one clock for every process on Linux) and each request's submit time and
token arrival times, taken when a message with new token ids arrives.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from autoglm_rpc.client import AsyncClient, Client
from bench.workload import Workload


async def _stream(client: AsyncClient, prompt: list[int], new_tokens: int) -> dict[str, Any]:
    submit = time.monotonic()
    token_times: list[float] = []
    completion_tokens = -1
    stopping = {"ignore_eos": True, "min_new_tokens": new_tokens}
    async for message in client.stream(
        token_ids=prompt, max_new_tokens=new_tokens, temperature=0.0, return_token_ids=True, stopping=stopping
    ):
        if message.token_ids:
            token_times.extend([time.monotonic()] * len(message.token_ids))
        if message.finish_reason:
            completion_tokens = message.usage.completion_tokens
    if completion_tokens != len(token_times):
        raise RuntimeError(f"counted {len(token_times)} tokens, usage says {completion_tokens}")
    return {"submit": submit, "token_times": token_times}


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    workload = Workload.from_dict(spec["workload"])
    first, stop = spec["requests"]
    prompts = workload.prompts(stop)[first:stop]
    async with AsyncClient(spec["target"]) as client:
        await _stream(client, prompts[0], min(2, workload.new_tokens))  # warm-up: the channel and the path
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        queue = list(reversed(prompts))
        results: list[dict[str, Any]] = []

        async def stream_loop() -> None:
            while queue:
                results.append(await _stream(client, queue.pop(), workload.new_tokens))

        start = time.monotonic()
        await asyncio.gather(*(stream_loop() for _ in range(spec["concurrency"])))
        end = time.monotonic()
    return {"start": start, "end": end, "requests": results}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    with Client(spec["target"]) as client:
        client.wait_until_ready(timeout=spec.get("ready_timeout", 600.0))
    result = asyncio.run(_run(spec))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
