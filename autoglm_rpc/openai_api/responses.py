"""One generation as an HTTP response: OpenAI's JSON body, or its server-sent events.

`GenerationResponse` drives the front end's events from its own `__call__`, in the one task that serves the call
(so the trace context the telemetry attaches is entered and left in one context). It takes the first event,
`Admitted`, before it starts the response, so a refusal (queue full, rate limit, unknown model...) raises to the
app's error handler and becomes a proper status. Then `stream: true` sends the chunks exactly as OpenAI frames them
(`data: {chunk}`, a blank line, ..., `data: [DONE]`; with `stream_options.include_usage`, `"usage": null` on every
chunk and a last chunk with the usage and no choices), otherwise one JSON body. An error after the 200 has gone
out is a last `data: {"error": ...}` event before `[DONE]`. A client that disconnects cancels the call's task:
the request leaves its worker's batch at the next step.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from starlette.responses import Response

from autoglm_rpc.core.requests import Admitted, Completed, GenerationEvent, TextDelta
from autoglm_rpc.openai_api import convert
from autoglm_rpc.openai_api.errors import sse_error

Scope = Any
_DONE = b"data: [DONE]\n\n"


def sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def envelope(admitted: Admitted, prefix: str, kind: str, choices: list, done: Completed | None) -> dict:
    body = {"id": prefix + admitted.request_id, "object": kind, "created": int(time.time()),
            "model": admitted.model, "choices": choices, "system_fingerprint": None}  # fmt: skip
    if done is not None:
        body["usage"] = convert.usage(done.prompt_tokens, len(done.token_ids))
    return body


class GenerationResponse(Response):
    def __init__(
        self,
        events: AsyncIterator[GenerationEvent],
        writer: type[Chunks],
        logprobs: convert.LogprobWriter,
        stream: bool,
        include_usage: bool,
    ) -> None:
        super().__init__()
        self.events = events
        self.writer = writer
        self.logprobs = logprobs
        self.stream = stream
        self.include_usage = include_usage

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        disconnected = asyncio.Event()
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.get_running_loop().create_task(_watch(receive, disconnected, task))
        try:
            async with aclosing(self.events):
                await self._respond(send)
        except asyncio.CancelledError:
            if not disconnected.is_set():
                raise
            task.uncancel()  # our own cancel: the client left, nobody is waiting for an answer
        finally:
            watcher.cancel()

    async def _respond(self, send: Any) -> None:
        admitted = await anext(self.events)
        assert isinstance(admitted, Admitted)
        headers = [(b"x-request-id", admitted.request_id.encode())]
        if not self.stream:
            done = await _completed(self.events)
            body = json.dumps(self.writer.body(self.logprobs, admitted, done), ensure_ascii=False).encode()
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        headers += [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunks = self.writer(self.logprobs, admitted, self.include_usage)
        async for chunk in chunks.stream(self.events):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def _watch(receive: Any, disconnected: asyncio.Event, task: asyncio.Task) -> None:
    """Cancel `task` when the client disconnects (the request body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnected.set()
    task.cancel()


async def _completed(events: AsyncIterator[GenerationEvent]) -> Completed:
    async for event in events:
        if isinstance(event, Completed):
            return event
    raise RuntimeError("generation ended without a result")


class Chunks:
    """One streamed response: the front end's events as OpenAI's SSE chunks, then `[DONE]`."""

    prefix = ""
    kind = ""
    stream_kind = ""

    def __init__(self, logprobs: convert.LogprobWriter, admitted: Admitted, include_usage: bool) -> None:
        self.logprobs = logprobs
        self.admitted = admitted
        self.include_usage = include_usage
        self.envelope = envelope(admitted, self.prefix, self.stream_kind, [], None)
        if include_usage:
            self.envelope["usage"] = None

    @classmethod
    def body(cls, logprobs: convert.LogprobWriter, admitted: Admitted, done: Completed) -> dict:
        """The whole (not streamed) response."""
        raise NotImplementedError

    async def stream(self, events: AsyncIterator[GenerationEvent]) -> AsyncIterator[bytes]:
        try:
            if head := self.first():
                yield head
            async for event in events:
                match event:
                    case TextDelta() if event.text or event.logprobs:
                        yield self.chunk(self.delta(event), None)
                    case Completed():
                        yield self.chunk(self.delta(None), convert.finish_reason(event))
                        if self.include_usage:
                            usage = convert.usage(event.prompt_tokens, len(event.token_ids))
                            yield sse({**self.envelope, "choices": [], "usage": usage})
        except Exception as error:  # the status (200) is sent: the error is the last event
            yield sse_error(error, "stream")
        yield _DONE

    def chunk(self, choice: dict, finish_reason: str | None) -> bytes:
        choice["index"], choice["finish_reason"] = 0, finish_reason
        return sse({**self.envelope, "choices": [choice]})

    def first(self) -> bytes:
        return b""

    def delta(self, event: TextDelta | None) -> dict:
        raise NotImplementedError


class ChatChunks(Chunks):
    prefix, kind, stream_kind = "chatcmpl-", "chat.completion", "chat.completion.chunk"

    @classmethod
    def body(cls, logprobs: convert.LogprobWriter, admitted: Admitted, done: Completed) -> dict:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": done.text},
            "logprobs": logprobs.chat(done.logprobs) if done.logprobs else None,
            "finish_reason": convert.finish_reason(done),
        }
        return envelope(admitted, cls.prefix, cls.kind, [choice], done)

    def first(self) -> bytes:
        return self.chunk({"delta": {"role": "assistant", "content": ""}, "logprobs": None}, None)

    def delta(self, event: TextDelta | None) -> dict:
        if event is None:
            return {"delta": {}, "logprobs": None}
        logprobs = self.logprobs.chat(event.logprobs) if event.logprobs else None
        return {"delta": {"content": event.text}, "logprobs": logprobs}


class CompletionChunks(Chunks):
    prefix, kind, stream_kind = "cmpl-", "text_completion", "text_completion"
    text_offset = 0

    @classmethod
    def body(cls, logprobs: convert.LogprobWriter, admitted: Admitted, done: Completed) -> dict:
        choice = {
            "index": 0,
            "text": done.text,
            "logprobs": logprobs.completion(done.logprobs) if done.logprobs else None,
            "finish_reason": convert.finish_reason(done),
        }
        return envelope(admitted, cls.prefix, cls.kind, [choice], done)

    def delta(self, event: TextDelta | None) -> dict:
        if event is None:
            return {"text": "", "logprobs": None}
        logprobs = self.logprobs.completion(event.logprobs, self.text_offset) if event.logprobs else None
        self.text_offset += len(event.text)
        return {"text": event.text, "logprobs": logprobs}
