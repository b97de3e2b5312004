"""A client subprocess of a service benchmark: `python -m bench.client_process SPEC_JSON`.

The spec names the target, the workload, the level's concurrency for this process and the slice of the level's
requests it owns. The process connects, waits for readiness, sends one short warm-up stream, prints `ready`,
waits for a line on stdin (so that every client process of a level starts together), then keeps its streams
busy (closed loop) until its requests are done: `AsyncClient.stream` over gRPC, or, when the spec has an
`http_url`, streamed `/v1/completions` over the OpenAI-compatible HTTP API (httpx, one connection per stream;
`logprobs: 0` so that each SSE chunk says how many tokens it carries), or, when the spec has `hf_serve`,
streamed `/v1/completions` of `transformers serve` with text prompts (`bench.hf_serve`). It prints one JSON
line: the `time.monotonic()` start and end (one clock for every process on Linux) and each request's submit time
and token arrival times, taken when a message with new tokens arrives.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoglm_rpc.client import AsyncClient, Client
from bench.hf_serve import chunk_tokens, request_body, text_prompts
from bench.workload import Workload

if TYPE_CHECKING:
    import httpx


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


async def _sse_chunks(client: httpx.AsyncClient, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The JSON chunks of one streamed `/v1/completions` call; an error event raises."""
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"the stream failed: {chunk['error']}")
            yield chunk


async def _stream_http(client: httpx.AsyncClient, prompt: list[int], new_tokens: int) -> dict[str, Any]:
    submit = time.monotonic()
    token_times: list[float] = []
    completion_tokens = -1
    body = {
        "prompt": prompt, "max_tokens": new_tokens, "min_tokens": new_tokens, "ignore_eos": True,
        "temperature": 0.0, "logprobs": 0, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    async for chunk in _sse_chunks(client, body):
        for choice in chunk["choices"]:
            if choice["logprobs"]:
                token_times.extend([time.monotonic()] * len(choice["logprobs"]["tokens"]))
        if chunk.get("usage"):
            completion_tokens = chunk["usage"]["completion_tokens"]
    if completion_tokens != len(token_times):
        raise RuntimeError(f"counted {len(token_times)} tokens, usage says {completion_tokens}")
    return {"submit": submit, "token_times": token_times}


async def _stream_hf_serve(
    client: httpx.AsyncClient, prompt: str, new_tokens: int, model: str, prompt_len: int
) -> dict[str, Any]:
    """One `transformers serve` stream. Its chunks carry text only; the served copy's tokenizer makes each token
    one space-separated piece (`bench.hf_serve.chunk_tokens`), so a chunk's tokens are counted, and the count is
    checked against the final usage (as is the prompt's length as the server tokenized it)."""
    submit = time.monotonic()
    token_times: list[float] = []
    usage: dict[str, int] = {}
    finish_reason = None
    async for chunk in _sse_chunks(client, request_body(prompt, new_tokens, model)):
        for choice in chunk["choices"]:
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
            elif choice.get("text"):
                token_times.extend([time.monotonic()] * chunk_tokens(choice["text"]))
        usage = chunk.get("usage") or usage
    if usage.get("completion_tokens") != len(token_times) or len(token_times) != new_tokens:
        raise RuntimeError(f"counted {len(token_times)} chunks for {new_tokens} tokens, usage says {usage}")
    if finish_reason != "length" or usage.get("prompt_tokens") != prompt_len:
        raise RuntimeError(
            f"finish_reason {finish_reason!r}, not 'length', or not {prompt_len} prompt tokens: {usage}"
        )
    return {"submit": submit, "token_times": token_times}


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    workload = Workload.from_dict(spec["workload"])
    first, stop = spec["requests"]
    hf_serve = spec.get("hf_serve")
    if hf_serve:
        prompts: list[Any] = text_prompts(Path(hf_serve["tokenizer"]), workload, stop)[first:stop]
    else:
        prompts = workload.prompts(stop)[first:stop]
    if spec.get("http_url"):
        import httpx  # only here: a gRPC-only run (the GPU check) needs no HTTP client

        connections = spec["concurrency"] + 1
        # Idle connections are dropped after 1 s, before the server's keep-alive timeout (uvicorn's 5 s) closes
        # them under a request being sent (the wait for "go" leaves the warm-up connection idle).
        limits = httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=1.0
        )
        async with httpx.AsyncClient(base_url=spec["http_url"], limits=limits, timeout=1800.0) as http:
            if hf_serve:
                model, length = hf_serve["model"], workload.prompt_len
                stream = lambda p, n: _stream_hf_serve(http, p, n, model, length)  # noqa: E731
                return await _drive(spec, prompts, workload, stream)
            return await _drive(spec, prompts, workload, lambda p, n: _stream_http(http, p, n))
    async with AsyncClient(spec["target"]) as client:
        return await _drive(spec, prompts, workload, lambda p, n: _stream(client, p, n))


async def _drive(spec: dict[str, Any], prompts: list[Any], workload: Workload, stream: Any) -> dict[str, Any]:
    """Warm up, report ready, wait for "go", then keep `concurrency` streams busy until the prompts are done."""
    await stream(prompts[0], min(2, workload.new_tokens))  # warm-up: the connection and the path
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    queue = list(reversed(prompts))
    results: list[dict[str, Any]] = []

    async def stream_loop() -> None:
        while queue:
            results.append(await stream(queue.pop(), workload.new_tokens))

    start = time.monotonic()
    await asyncio.gather(*(stream_loop() for _ in range(spec["concurrency"])))
    end = time.monotonic()
    return {"start": start, "end": end, "requests": results}


def main(argv: list[str]) -> int:
    """Run the spec's streams. A failure is answered as `{"error": "..."}` on stdout, in place of `ready` or of
    the result, so the benchmark reports why (a stream of another shape, a server error) rather than an exit."""
    spec = json.loads(argv[0])
    try:
        if spec.get("target"):  # our server; transformers serve has answered /health before any client starts
            with Client(spec["target"]) as client:
                client.wait_until_ready(timeout=spec.get("ready_timeout", 600.0))
        result = asyncio.run(_run(spec))
    except Exception as exc:
        _answer({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    _answer(result)
    return 0


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
