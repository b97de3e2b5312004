"""`autoglm.v1.GenerationService`: a thin layer from protobuf to the front end and back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc

from autoglm.v1 import generation_pb2, types_pb2
from autoglm_rpc.core import request_ids
from autoglm_rpc.core.errors import InvalidParameter
from autoglm_rpc.core.frontend import Frontend
from autoglm_rpc.core.requests import Admitted, Completed, GenerationRequest, RequestLimits, TextDelta
from autoglm_rpc.grpc_api import convert, errors
from autoglm_rpc.grpc_api.auth import current_principal
from autoglm_rpc.telemetry.generation import GenerationTelemetry
from workers.protocol import TokenLogprob

Message = TypeVar("Message")
MAX_CANCEL_IDS = 1024


@dataclass(frozen=True, slots=True)
class Checked(Generic[Message]):
    """A request message with what only the wire shows: how many `input` oneof members it carried."""

    message: Message
    num_inputs: int


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's absolute deadline on the monotonic clock. (Its trace context is the edge's: the telemetry
    interceptor made it current, and routing hands it to the worker.)"""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class GenerationServicer:
    def __init__(
        self, frontend: Frontend, telemetry: GenerationTelemetry, limits: RequestLimits = convert.DEFAULT_LIMITS
    ) -> None:
        self._frontend = frontend
        self._telemetry = telemetry
        self._limits = limits

    @errors.unary
    async def Generate(
        self, request: Checked[generation_pb2.GenerateRequest], context: grpc.aio.ServicerContext
    ) -> generation_pb2.GenerateResponse:
        owner = self._admit()
        parsed = convert.generation_request(request.message, request.num_inputs, self._limits)
        request_id = ""
        observer = self._telemetry.observe(parsed, stream=False)
        events = self._frontend.generate(parsed, _deadline(context), owner, observer)
        async with aclosing(events):
            async for event in events:
                match event:
                    case Admitted(request_id=request_id):
                        await context.send_initial_metadata((("x-request-id", request_id),))
                    case Completed():
                        return convert.generate_response(
                            request_id, self._frontend.model.model_id, event, parsed.output
                        )
        raise RuntimeError("generation ended without a result")

    @errors.unary
    async def GenerateStream(
        self, request: Checked[generation_pb2.GenerateStreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        # Writes with context.write rather than yielding: a generator here would be resumed through every wrapper
        # layer (telemetry, guard, error boundary) once per message; a coroutine is awaited through them once.
        owner = self._admit()
        parsed = convert.generation_request(request.message, request.num_inputs, self._limits)
        batcher = _DeltaBatcher(parsed)
        observer = self._telemetry.observe(parsed, stream=True)
        events = self._frontend.generate(parsed, _deadline(context), owner, observer)
        async with aclosing(events):
            async for event in events:
                match event:
                    case TextDelta():
                        message = batcher.add(event)
                        if message is not None:
                            await context.write(message)
                    case Admitted(request_id=request_id, prompt_tokens=prompt_tokens):
                        batcher.request_id = request_id
                        await context.send_initial_metadata((("x-request-id", request_id),))
                        await context.write(
                            generation_pb2.GenerateStreamResponse(
                                request_id=request_id, prompt=types_pb2.PromptInfo(prompt_tokens=prompt_tokens)
                            )
                        )
                    case Completed():
                        await context.write(batcher.last(event))

    @errors.unary
    async def CancelGeneration(
        self, request: generation_pb2.CancelGenerationRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.CancelGenerationResponse:
        if not request.request_ids:
            raise InvalidParameter("request_ids", "at least one id is needed")
        if len(request.request_ids) > MAX_CANCEL_IDS:
            raise InvalidParameter("request_ids", f"at most {MAX_CANCEL_IDS} ids")
        for index, request_id in enumerate(request.request_ids):
            convert.request_id(request_id, f"request_ids[{index}]")
        caller = current_principal()  # ids are scoped to it: another key's requests are NOT_FOUND
        results = []
        for request_id in request.request_ids:
            outcome = self._cancel(request_ids.scoped(caller, request_id))
            results.append(generation_pb2.CancelGenerationResult(request_id=request_id, outcome=outcome))
        return generation_pb2.CancelGenerationResponse(results=results)

    def _admit(self) -> str | None:
        """The caller's API key owner (None without authentication), after counting the call against its rate."""
        owner = current_principal()
        self._frontend.limiter.admit_request(owner)
        return owner

    def _cancel(self, request_id: str) -> int:
        pool = self._frontend.pool
        if pool.is_in_flight(request_id):
            pool.cancel(request_id)
            return generation_pb2.CANCEL_OUTCOME_CANCELLED
        if pool.was_finished(request_id):
            return generation_pb2.CANCEL_OUTCOME_ALREADY_FINISHED
        return generation_pb2.CANCEL_OUTCOME_NOT_FOUND

    @errors.unary
    async def Tokenize(
        self, request: generation_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.TokenizeResponse:
        self._admit()
        self._frontend.check_model(convert.model_name(request.model))
        add_special = request.add_special_tokens if request.HasField("add_special_tokens") else True
        match request.WhichOneof("input"):
            case "text":
                ids = self._frontend.encode(request.text, add_special_tokens=add_special)
            case "chat":
                ids = await self._frontend.tokenize(convert.chat_prompt(request.chat, "chat"))
            case _:
                raise InvalidParameter("input", "set one of text and chat")
        return generation_pb2.TokenizeResponse(
            token_count=len(ids), token_ids=ids, max_context_tokens=self._frontend.max_context_tokens
        )


@dataclass
class _DeltaBatcher:
    """Groups text deltas into stream messages of at least `min_tokens_per_message` tokens."""

    request: GenerationRequest
    request_id: str = ""
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    num_tokens: int = 0

    def add(self, delta: TextDelta) -> generation_pb2.GenerateStreamResponse | None:
        output = self.request.output
        has_payload = delta.text or output.return_token_ids or output.return_logprobs
        if has_payload and not self.num_tokens and len(delta.token_ids) >= self.request.min_tokens_per_message:
            # Nothing held back and the delta is big enough alone (the usual case): one message, no copies.
            message = generation_pb2.GenerateStreamResponse(request_id=self.request_id)
            return self._fill(message, delta.text, delta.token_ids, delta.logprobs)
        self.text.append(delta.text)
        self.token_ids.extend(delta.token_ids)
        self.logprobs.extend(delta.logprobs)
        self.num_tokens += len(delta.token_ids)
        has_payload = any(self.text) or output.return_token_ids or output.return_logprobs
        if self.num_tokens < self.request.min_tokens_per_message or not has_payload:
            return None
        return self._take(generation_pb2.GenerateStreamResponse(request_id=self.request_id))

    def last(self, done: Completed) -> generation_pb2.GenerateStreamResponse:
        return self._take(convert.final_stream_response(self.request_id, done))

    def _take(self, message: generation_pb2.GenerateStreamResponse) -> generation_pb2.GenerateStreamResponse:
        """`message` with everything held back, which is then cleared."""
        message = self._fill(message, "".join(self.text), self.token_ids, self.logprobs)
        self.text, self.token_ids, self.logprobs, self.num_tokens = [], [], [], 0
        return message

    def _fill(
        self,
        message: generation_pb2.GenerateStreamResponse,
        text: str,
        token_ids: Sequence[int],
        logprobs: Sequence[TokenLogprob],
    ) -> generation_pb2.GenerateStreamResponse:
        """`message` with this text, and the ids and logprobs when the request asked for them."""
        message.text = text
        if self.request.output.return_token_ids:
            message.token_ids.extend(token_ids)
        if self.request.output.return_logprobs:
            message.logprobs.extend(convert.logprobs(logprobs))
        return message
