"""Clients that go away mid-stream are normal: hundreds of disconnects log nothing above INFO (each call's access
line is INFO) and no traceback, from the tracing interceptor or anywhere else; over HTTP (SSE) too."""

from __future__ import annotations

import asyncio
import gc
import logging

import grpc
import httpx
import pytest

from autoglm.v1 import generation_pb2, generation_pb2_grpc
from tests.support import ServerThread

NUM_DISCONNECTS = 300
NUM_HTTP_DISCONNECTS = 60
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


async def _http_disconnect_mid_stream(client: httpx.AsyncClient, index: int) -> None:
    body = {"prompt": f"going away {index}", "max_tokens": 200, "ignore_eos": True, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        if index % 3:  # most leave after the first chunk, some before reading anything
            async for _ in response.aiter_lines():
                break


async def _http_disconnect_many(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        for start in range(0, NUM_HTTP_DISCONNECTS, CONCURRENCY):
            batch = range(start, min(start + CONCURRENCY, NUM_HTTP_DISCONNECTS))
            await asyncio.gather(*(_http_disconnect_mid_stream(client, index) for index in batch))


def test_http_stream_disconnects_log_nothing_above_info(
    glm_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    assert glm_server.app is not None and glm_server.app.http is not None
    base_url = f"http://127.0.0.1:{glm_server.app.http.port}"
    with caplog.at_level(logging.DEBUG):
        asyncio.run(_http_disconnect_many(base_url))
        gc.collect()
        after = httpx.post(
            f"{base_url}/v1/completions", json={"prompt": "still serving", "max_tokens": 2}, timeout=60
        )
        assert after.json()["usage"]["completion_tokens"] == 2
        gc.collect()
    loud = [r for r in caplog.records if r.levelno > logging.INFO]
    assert not loud, "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in loud[:10])
    assert "Traceback" not in caplog.text
    assert sum(r.name == "autoglm_rpc.access" and "499" in r.getMessage() for r in caplog.records) >= 1
