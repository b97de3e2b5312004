"""The transport's floor: a bare grpc.aio server that streams tokens at the engine's pace and does nothing else.

`python -m bench.grpc_floor STEP_SECONDS` serves `autoglm.v1.GenerationService/GenerateStream` (and the readiness
`Health/Watch` the bench clients wait on) on 127.0.0.1, prints one JSON line `{"port": N, "pid": P}`, and serves
until its stdin closes. Every `STEP_SECONDS` one "step" fires for all open streams together, as an engine step
does, and each stream writes one message holding one token (`min_tokens_per_message` 1, as the service is
driven), with the first message (request id and prompt size) and the last (finish reason, usage) shaped as the
service sends them. No tokenizer, no worker, no pipe: what this process spends per token is what grpc.aio and
the event loop cost alone, so the gateway's own cost is the service's figure minus this one (system
`grpc_floor` of the benchmark; the bench's client processes drive it exactly as they drive the service).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autoglm.v1 import generation_pb2, generation_pb2_grpc, types_pb2


class _Steps:
    """A shared clock: `wait()` returns at the next step, for every waiter at once."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._next: asyncio.Future[None] | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            step, self._next = self._next, None
            if step is not None:
                step.set_result(None)

    async def wait(self) -> None:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        await self._next


class FloorGeneration(generation_pb2_grpc.GenerationServiceServicer):
    """GenerateStream only: `stopping.max_new_tokens` messages of one token each, one per step."""

    def __init__(self, steps: _Steps) -> None:
        self._steps = steps

    async def GenerateStream(  # noqa: N802 (grpc's method name)
        self, request: generation_pb2.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        request_id = uuid.uuid4().hex
        prompt_tokens = len(request.prompt_token_ids.ids)
        yield generation_pb2.GenerateStreamResponse(
            request_id=request_id, prompt=types_pb2.PromptInfo(prompt_tokens=prompt_tokens)
        )
        num_tokens = request.stopping.max_new_tokens
        for _ in range(num_tokens - 1):
            await self._steps.wait()
            yield generation_pb2.GenerateStreamResponse(request_id=request_id, text="a", token_ids=[1])
        await self._steps.wait()
        yield generation_pb2.GenerateStreamResponse(
            request_id=request_id,
            text="a",
            token_ids=[1],
            finish_reason=types_pb2.FINISH_REASON_MAX_NEW_TOKENS,
            usage=types_pb2.Usage(
                prompt_tokens=prompt_tokens, completion_tokens=num_tokens, total_tokens=prompt_tokens + num_tokens
            ),
        )


class _Ready(health_pb2_grpc.HealthServicer):
    async def Watch(  # noqa: N802 (grpc's method name)
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        await asyncio.Event().wait()  # the client stops watching once it has SERVING


async def _serve(period: float) -> None:
    steps = _Steps(period)
    server = grpc.aio.server()
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(FloorGeneration(steps), server)
    health_pb2_grpc.add_HealthServicer_to_server(_Ready(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    clock = asyncio.create_task(steps.run())
    sys.stdout.write(json.dumps({"port": port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        clock.cancel()
        await server.stop(grace=None)


def main(argv: list[str]) -> int:
    period = float(argv[0])
    if not period > 0:
        raise SystemExit(f"STEP_SECONDS must be positive, got {argv[0]!r}")
    asyncio.run(_serve(period))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
