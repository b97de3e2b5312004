"""The protobuf edge: request messages to validated dataclasses, and events back to response messages.

Every check of a single field's range happens here and raises `InvalidParameter` naming the field as the
contract spells it (`sampling.temperature`). Checks that need the model (vocabulary, context) are the front end's.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import duration_pb2

from autoglm.v1 import generation_pb2, types_pb2
from autoglm_rpc.core import constraints
from autoglm_rpc.core.errors import InvalidParameter
from autoglm_rpc.core.requests import (  # the fixed bounds and checks both protocols share
    MAX_CHAT_MESSAGES,
    MAX_MESSAGE_PARTS,
    MAX_PROMPT_TOKEN_IDS,
    MAX_ROLE_CHARS,
    MAX_STOP_TOKEN_IDS,
    MAX_TOP_K,
    ChatMessage,
    ChatPrompt,
    Completed,
    ContentPart,
    GenerationRequest,
    ImagePart,
    OutputRequest,
    Prompt,
    RequestLimits,
    SamplingOverrides,
    StopRequest,
    TextPart,
    Timings,
    TokenPrompt,
    in_range,
    model_name,
    output_penalty,
    request_id,
)
from workers.protocol import Constraint, FinishReason, Priority, TokenLogprob

MAX_MIN_TOKENS_PER_MESSAGE = 4096
DEFAULT_LIMITS = RequestLimits()
# Duration's own range (google/protobuf/duration.proto): about 10,000 years.
_MAX_DURATION_SECONDS = 315_576_000_000

AnyGenerateRequest = generation_pb2.GenerateRequest | generation_pb2.GenerateStreamRequest

_PRIORITIES = {
    types_pb2.PRIORITY_UNSPECIFIED: Priority.NORMAL,
    types_pb2.PRIORITY_LOW: Priority.LOW,
    types_pb2.PRIORITY_NORMAL: Priority.NORMAL,
    types_pb2.PRIORITY_HIGH: Priority.HIGH,
}
FINISH_REASONS = {
    FinishReason.EOS_TOKEN: types_pb2.FINISH_REASON_EOS_TOKEN,
    FinishReason.STOP_SEQUENCE: types_pb2.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.MAX_NEW_TOKENS: types_pb2.FINISH_REASON_MAX_NEW_TOKENS,
    FinishReason.CONTEXT_LIMIT: types_pb2.FINISH_REASON_CONTEXT_LIMIT,
    FinishReason.TIME_LIMIT: types_pb2.FINISH_REASON_TIME_LIMIT,
    FinishReason.CANCELLED: types_pb2.FINISH_REASON_CANCELLED,
}


# ---------------------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------------------


def generation_request(
    message: AnyGenerateRequest, num_inputs: int = 1, limits: RequestLimits = DEFAULT_LIMITS
) -> GenerationRequest:
    """Validate a Generate/GenerateStream request. `num_inputs` counts the `input` oneof fields on the wire."""
    if num_inputs > 1:
        raise InvalidParameter("input", "set only one of prompt, chat and prompt_token_ids")
    if message.priority not in _PRIORITIES:
        raise InvalidParameter("priority", f"unknown value {message.priority}")
    min_tokens = 1
    if isinstance(message, generation_pb2.GenerateStreamRequest):
        min_tokens = max(1, message.stream_options.min_tokens_per_message)
        if min_tokens > MAX_MIN_TOKENS_PER_MESSAGE:
            raise InvalidParameter(
                "stream_options.min_tokens_per_message", f"must be at most {MAX_MIN_TOKENS_PER_MESSAGE}"
            )
    return GenerationRequest(
        prompt=_prompt(message),
        request_id=request_id(message.request_id, "request_id"),
        model=model_name(message.model),
        sampling=_sampling(message.sampling),
        stopping=_stopping(message.stopping, limits),
        output=_output(message.output, limits),
        priority=_PRIORITIES[message.priority],
        min_tokens_per_message=min_tokens,
        constraint=_constraint(message.output),
    )


def _prompt(message: AnyGenerateRequest) -> Prompt:
    match message.WhichOneof("input"):
        case "prompt":
            if not message.prompt:
                raise InvalidParameter("prompt", "must not be empty")
            return message.prompt
        case "chat":
            return chat_prompt(message.chat, "chat")
        case "prompt_token_ids":
            if len(message.prompt_token_ids.ids) > MAX_PROMPT_TOKEN_IDS:
                raise InvalidParameter("prompt_token_ids.ids", f"at most {MAX_PROMPT_TOKEN_IDS} ids")
            ids = tuple(message.prompt_token_ids.ids)
            if not ids:
                raise InvalidParameter("prompt_token_ids.ids", "must not be empty")
            return TokenPrompt(ids)
    raise InvalidParameter("input", "set one of prompt, chat and prompt_token_ids")


def chat_prompt(chat: types_pb2.ChatInput, field: str) -> ChatPrompt:
    if not chat.messages:
        raise InvalidParameter(f"{field}.messages", "at least one message is needed")
    if len(chat.messages) > MAX_CHAT_MESSAGES:
        raise InvalidParameter(f"{field}.messages", f"at most {MAX_CHAT_MESSAGES} messages")
    for index, item in enumerate(chat.messages):
        if not 0 < len(item.role) <= MAX_ROLE_CHARS:
            raise InvalidParameter(
                f"{field}.messages[{index}].role", f"must have 1 to {MAX_ROLE_CHARS} characters"
            )
    add = chat.add_generation_prompt if chat.HasField("add_generation_prompt") else True
    return ChatPrompt(tuple(_chat_message(m, f"{field}.messages[{i}]") for i, m in enumerate(chat.messages)), add)


def _chat_message(message: types_pb2.ChatMessage, field: str) -> ChatMessage:
    """A message's content, or its parts: text parts alone become their joined text (as `content`)."""
    if not message.parts:
        return ChatMessage(message.role, message.content)
    if message.content:
        raise InvalidParameter(field, "set content or parts, not both")
    if len(message.parts) > MAX_MESSAGE_PARTS:  # measured before the parts are copied into Python
        raise InvalidParameter(f"{field}.parts", f"at most {MAX_MESSAGE_PARTS} parts")
    parts: list[ContentPart] = []
    for index, part in enumerate(message.parts):
        match part.WhichOneof("kind"):
            case "text":
                parts.append(TextPart(part.text))
            case "image":
                image = part.image
                parts.append(
                    ImagePart(f"{field}.parts[{index}].image", data=image.data, media_type=image.media_type)
                )
            case _:
                raise InvalidParameter(f"{field}.parts[{index}]", "set text or image")
    if not any(isinstance(part, ImagePart) for part in parts):
        return ChatMessage(message.role, "".join(part.text for part in parts))  # type: ignore[union-attr]
    return ChatMessage(message.role, "", tuple(parts))


def _sampling(options: types_pb2.SamplingOptions) -> SamplingOverrides:
    def get(name: str) -> float | None:
        return getattr(options, name) if options.HasField(name) else None

    temperature, top_p, penalty = get("temperature"), get("top_p"), get("repetition_penalty")
    top_k, seed = get("top_k"), get("seed")
    if seed is not None and seed >= 2**63:
        raise InvalidParameter("sampling.seed", "must be below 2^63")
    if top_k is not None and top_k > MAX_TOP_K:
        raise InvalidParameter("sampling.top_k", f"must be at most {MAX_TOP_K} (0 disables)")
    return SamplingOverrides(
        temperature=None if temperature is None else in_range("sampling.temperature", temperature, 0, 100),
        top_p=None if top_p is None else in_range("sampling.top_p", top_p, 0, 1, low_open=True),
        top_k=None if top_k is None else int(top_k),
        repetition_penalty=(
            None if penalty is None else in_range("sampling.repetition_penalty", penalty, 0, 10, low_open=True)
        ),
        frequency_penalty=output_penalty("sampling.frequency_penalty", get("frequency_penalty")),
        presence_penalty=output_penalty("sampling.presence_penalty", get("presence_penalty")),
        seed=None if seed is None else int(seed),
    )


def _stopping(options: types_pb2.StopOptions, limits: RequestLimits) -> StopRequest:
    max_new = options.max_new_tokens if options.HasField("max_new_tokens") else None
    if max_new is not None and max_new < 1:
        raise InvalidParameter("stopping.max_new_tokens", "must be at least 1 (leave it unset for the default)")
    if max_new is not None and options.min_new_tokens > max_new:
        raise InvalidParameter("stopping.min_new_tokens", f"must not exceed max_new_tokens ({max_new})")
    # Lengths first: a repeated field is copied into Python only once it is known to be small.
    if len(options.stop_sequences) > limits.max_stop_sequences:
        raise InvalidParameter("stopping.stop_sequences", f"at most {limits.max_stop_sequences}")
    stops = tuple(options.stop_sequences)
    for index, stop in enumerate(stops):
        if not 0 < len(stop) <= limits.max_stop_sequence_chars:
            raise InvalidParameter(
                f"stopping.stop_sequences[{index}]", f"must have 1 to {limits.max_stop_sequence_chars} characters"
            )
    if len(options.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidParameter("stopping.stop_token_ids", f"at most {MAX_STOP_TOKEN_IDS}")
    time_limit = None
    if options.HasField("max_generation_time"):
        time_limit = _positive_duration("stopping.max_generation_time", options.max_generation_time)
    return StopRequest(
        max_new_tokens=max_new,
        min_new_tokens=options.min_new_tokens,
        stop_sequences=stops,
        include_stop_sequence=options.include_stop_sequence,
        stop_token_ids=tuple(options.stop_token_ids),
        ignore_eos=options.ignore_eos,
        max_generation_time=time_limit,
    )


def _positive_duration(field: str, value: duration_pb2.Duration) -> float:
    """Seconds of a Duration that is valid (its own range, nanos agreeing in sign) and positive."""
    seconds, nanos = value.seconds, value.nanos
    if abs(seconds) > _MAX_DURATION_SECONDS or abs(nanos) > 999_999_999 or seconds * nanos < 0:
        raise InvalidParameter(field, "not a valid Duration")
    total = seconds + nanos / 1e9
    if total <= 0:
        raise InvalidParameter(field, "must be positive")
    return total


def _output(options: types_pb2.OutputOptions, limits: RequestLimits) -> OutputRequest:
    if options.top_logprobs > limits.max_top_logprobs:
        raise InvalidParameter("output.top_logprobs", f"must be at most {limits.max_top_logprobs}")
    if options.top_logprobs and not options.return_logprobs:
        raise InvalidParameter("output.top_logprobs", "needs output.return_logprobs")
    skip = options.skip_special_tokens if options.HasField("skip_special_tokens") else True
    return OutputRequest(options.return_token_ids, options.return_logprobs, options.top_logprobs, skip)


def _constraint(options: types_pb2.OutputOptions) -> Constraint | None:
    """The `output.constraint` oneof, checked (compiled) by core/constraints.py."""
    match options.WhichOneof("constraint"):
        case "json_schema":
            return constraints.json_schema("output.json_schema", options.json_schema)
        case "json_object":
            return constraints.json_object() if options.json_object else None
        case "regex":
            return constraints.regex("output.regex", options.regex)
        case "choice":
            return constraints.choice("output.choice.options", list(options.choice.options))
        case "grammar":
            return constraints.grammar("output.grammar", options.grammar)
    return None


# ---------------------------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------------------------


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(max(seconds, 0.0) * 1e9))
    return value


def timing(timings: Timings) -> types_pb2.Timing:
    return types_pb2.Timing(
        queue_time=_duration(timings.queue_time),
        time_to_first_token=_duration(timings.time_to_first_token),
        decode_time=_duration(timings.decode_time),
        total_time=_duration(timings.total_time),
    )


def usage(prompt_tokens: int, completion_tokens: int) -> types_pb2.Usage:
    return types_pb2.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def logprobs(items: Iterable[TokenLogprob]) -> list[types_pb2.TokenLogprob]:
    return [
        types_pb2.TokenLogprob(
            token_id=item.token_id,
            logprob=item.logprob,
            top_logprobs=[types_pb2.TopLogprob(token_id=t, logprob=lp) for t, lp in item.top],
        )
        for item in items
    ]


def generate_response(
    request_id: str, model: str, done: Completed, output: OutputRequest
) -> generation_pb2.GenerateResponse:
    sequence = types_pb2.Sequence(index=0, text=done.text, finish_reason=FINISH_REASONS[done.finish_reason])
    if output.return_token_ids:
        sequence.token_ids.extend(done.token_ids)
    if output.return_logprobs:
        sequence.logprobs.extend(logprobs(done.logprobs))
    if done.stop_sequence is not None:
        sequence.stop_sequence = done.stop_sequence
    elif done.stop_token_id is not None:
        sequence.stop_token_id = done.stop_token_id
    return generation_pb2.GenerateResponse(
        request_id=request_id,
        model=model,
        sequences=[sequence],
        prompt=types_pb2.PromptInfo(prompt_tokens=done.prompt_tokens),
        usage=usage(done.prompt_tokens, len(done.token_ids)),
        timing=timing(done.timings),
        seed=done.seed,
    )


def final_stream_response(request_id: str, done: Completed) -> generation_pb2.GenerateStreamResponse:
    """The fields only the last stream message carries (the caller adds any pending delta)."""
    message = generation_pb2.GenerateStreamResponse(
        request_id=request_id,
        finish_reason=FINISH_REASONS[done.finish_reason],
        usage=usage(done.prompt_tokens, len(done.token_ids)),
        timing=timing(done.timings),
        seed=done.seed,
    )
    if done.stop_sequence is not None:
        message.stop_sequence = done.stop_sequence
    elif done.stop_token_id is not None:
        message.stop_token_id = done.stop_token_id
    return message
