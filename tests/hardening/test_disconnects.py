"""Clients that go away mid-stream are normal: hundreds of disconnects log nothing above INFO (each call's access
line is INFO) and no traceback, from the tracing interceptor or anywhere else."""

from __future__ import annotations

import asyncio
import gc
import logging

import grpc
import pytest

from autoglm.v1 import generation_pb2, generation_pb2_grpc
from tests.support import ServerThread

NUM_DISCONNECTS = 300
CONCURRENCY = 30


async def _disconnect_mid_stream(stub: generation_pb2_grpc.GenerationServiceStub, index: int) -> None:
    request = generation_pb2.GenerateStreamRequest(
        prompt=f"going away {index}", stopping={"max_new_tokens": 200, "ignore_eos": True}
    )
    call = stub.GenerateStream(request, timeout=60)
    async for _ in call:
        if index % 3:  # most leave after the first message, some before reading anything
            break
    call.cancel()


async def _disconnect_many(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        for start in range(0, NUM_DISCONNECTS, CONCURRENCY):
            batch = range(start, min(start + CONCURRENCY, NUM_DISCONNECTS))
            await asyncio.gather(*(_disconnect_mid_stream(stub, index) for index in batch))


def test_mid_stream_disconnects_log_nothing_above_info(
    glm_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        asyncio.run(_disconnect_many(glm_server.target))
        gc.collect()  # abandoned generators are finalized now, where their errors would be logged
        with glm_server.client() as client:  # a call after them: every disconnect has been handled by now
            assert client.generate("still serving", max_new_tokens=2, timeout=60).usage.completion_tokens == 2
        gc.collect()
    loud = [r for r in caplog.records if r.levelno > logging.INFO]
    assert not loud, "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in loud[:10])
    assert "Traceback" not in caplog.text
