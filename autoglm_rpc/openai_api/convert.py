"""The HTTP edge: OpenAI request bodies to validated `GenerationRequest`s, and the front end's events back to
OpenAI's JSON (whole responses and stream chunks).

Every range check of a field happens here, with the bounds `requests.py` shares with gRPC, and raises
`InvalidParameter` naming the field as OpenAI's API spells it (`temperature`, `messages[2].content`). Checks that
need the model (vocabulary, context length) are the front end's, as for gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoglm_rpc.core.errors import InvalidParameter
from autoglm_rpc.core.requests import (
    MAX_CHAT_MESSAGES,
    MAX_MESSAGE_PARTS,
    MAX_PROMPT_TOKEN_IDS,
    MAX_ROLE_CHARS,
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
    TokenPrompt,
    in_range,
    model_name,
    output_penalty,
    request_id,
)
from autoglm_rpc.openai_api import schemas, structured
from autoglm_rpc.text.tokenizer import TextTokenizer
from workers.protocol import FinishReason, TokenLogprob

FINISH_REASONS = {
    FinishReason.EOS_TOKEN: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.MAX_NEW_TOKENS: "length",
    FinishReason.CONTEXT_LIMIT: "length",
    FinishReason.TIME_LIMIT: "length",
    # Cancelled by its id (CancelGeneration): OpenAI's API has no word for it; vLLM's "abort" is the one its
    # clients know. (A client that disconnects gets nothing; a passed deadline is an error, not a finish.)
    FinishReason.CANCELLED: "abort",
}
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's own bound for /v1/completions `logprobs`


# -- requests -------------------------------------------------------------------------------------------------


def chat_request(
    body: schemas.ChatCompletionRequest, limits: RequestLimits, caller_request_id: str = ""
) -> GenerationRequest:
    _refuse_unsupported(body, ("tools", "tool_choice"))
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise InvalidParameter("max_completion_tokens", "set only one of max_tokens and max_completion_tokens")
    if body.top_logprobs and not body.logprobs:
        raise InvalidParameter("top_logprobs", "needs logprobs: true")
    top = _top_logprobs("top_logprobs", body.top_logprobs or 0, limits.max_top_logprobs)
    if body.max_completion_tokens is not None:
        max_tokens = (body.max_completion_tokens, "max_completion_tokens")
    else:
        max_tokens = (body.max_tokens, "max_tokens")
    return GenerationRequest(
        prompt=ChatPrompt(_messages(body.messages), body.add_generation_prompt),
        request_id=request_id(caller_request_id, "request_id"),
        model=model_name(body.model),
        sampling=_sampling(body),
        stopping=_stopping(body, limits, max_tokens),
        output=OutputRequest(
            return_logprobs=body.logprobs, top_logprobs=top, skip_special_tokens=body.skip_special_tokens
        ),
        constraint=structured.constraint(body),
    )


def completion_request(
    body: schemas.CompletionRequest, limits: RequestLimits, caller_request_id: str = ""
) -> GenerationRequest:
    _refuse_unsupported(body, ("suffix",))
    if body.echo:
        raise InvalidParameter("echo", "echo is not supported; only false")
    if body.best_of is not None and body.best_of != 1:
        raise InvalidParameter("best_of", "only 1 is supported")
    logprobs = body.logprobs
    if logprobs is not None:
        logprobs = _top_logprobs("logprobs", logprobs, min(MAX_COMPLETION_LOGPROBS, limits.max_top_logprobs))
    return GenerationRequest(
        prompt=_completion_prompt(body.prompt),
        request_id=request_id(caller_request_id, "request_id"),
        model=model_name(body.model),
        sampling=_sampling(body),
        stopping=_stopping(body, limits, (body.max_tokens, "max_tokens")),
        output=OutputRequest(
            return_logprobs=logprobs is not None,
            top_logprobs=logprobs or 0,
            skip_special_tokens=body.skip_special_tokens,
        ),
        constraint=structured.constraint(body),
    )


def _refuse_unsupported(body: schemas._Sampling, names: Sequence[str]) -> None:
    for name in names:
        if getattr(body, name) is not None:
            raise InvalidParameter(name, "not supported by this server")


def _top_logprobs(field: str, value: int, high: int) -> int:
    if not 0 <= value <= high:
        raise InvalidParameter(field, f"must be in [0, {high}], got {value}")
    return value


def _messages(messages: list[schemas.ChatMessage]) -> tuple[ChatMessage, ...]:
    if not messages:
        raise InvalidParameter("messages", "at least one message is needed")
    if len(messages) > MAX_CHAT_MESSAGES:
        raise InvalidParameter("messages", f"at most {MAX_CHAT_MESSAGES} messages")
    result = []
    for index, message in enumerate(messages):
        if not 0 < len(message.role) <= MAX_ROLE_CHARS:
            raise InvalidParameter(f"messages[{index}].role", f"must have 1 to {MAX_ROLE_CHARS} characters")
        result.append(_message(message.role, message.content, f"messages[{index}].content"))
    return tuple(result)


def _message(role: str, content: str | list[schemas.ContentPart] | None, field: str) -> ChatMessage:
    """A message's text (a string, or its text parts joined), or its parts when it has an image."""
    if content is None or isinstance(content, str):
        return ChatMessage(role, content or "")
    if len(content) > MAX_MESSAGE_PARTS:
        raise InvalidParameter(field, f"at most {MAX_MESSAGE_PARTS} parts")
    parts: list[ContentPart] = []
    for index, part in enumerate(content):
        if part.type == "text" and part.text is not None:
            parts.append(TextPart(part.text))
        elif part.type == "image_url" and part.image_url is not None:
            parts.append(ImagePart(f"{field}[{index}]", url=part.image_url.url))
        else:
            raise InvalidParameter(
                f"{field}[{index}]", f"only text and image_url parts are supported, got {part.type!r}"
            )
    if not any(isinstance(part, ImagePart) for part in parts):
        return ChatMessage(role, "".join(part.text for part in parts))  # type: ignore[union-attr]
    return ChatMessage(role, "", tuple(parts))


def _completion_prompt(prompt: str | list[str] | list[int] | list[list[int]]) -> Prompt:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidParameter("prompt", "must not be empty")
        return prompt
    if not prompt:
        raise InvalidParameter("prompt", "must not be empty")
    if not all(isinstance(item, int) for item in prompt):
        raise InvalidParameter("prompt", "one prompt per request (a string or a list of token ids)")
    if len(prompt) > MAX_PROMPT_TOKEN_IDS:
        raise InvalidParameter("prompt", f"at most {MAX_PROMPT_TOKEN_IDS} token ids")
    if any(item < 0 for item in prompt):  # type: ignore[operator]
        raise InvalidParameter("prompt", "token ids must not be negative")
    return TokenPrompt(tuple(prompt))  # type: ignore[arg-type]


def _sampling(body: schemas._Sampling) -> SamplingOverrides:
    """The sampling options; also refuses what both endpoints do not support (n > 1, logit_bias)."""
    _refuse_unsupported(body, ("logit_bias",))
    if body.n != 1:
        raise InvalidParameter("n", "only n=1 is supported (one choice per request)")
    if body.seed is not None and not 0 <= body.seed < 2**63:
        raise InvalidParameter("seed", "must be in [0, 2^63)")
    top_k = body.top_k
    if top_k is not None and not -1 <= top_k <= MAX_TOP_K:
        raise InvalidParameter("top_k", f"must be in [-1, {MAX_TOP_K}] (0 or -1: off)")
    penalty = body.repetition_penalty
    return SamplingOverrides(
        temperature=None if body.temperature is None else in_range("temperature", body.temperature, 0, 100),
        top_p=None if body.top_p is None else in_range("top_p", body.top_p, 0, 1, low_open=True),
        top_k=None if top_k is None else max(top_k, 0),
        repetition_penalty=None if penalty is None else in_range("repetition_penalty", penalty, 0, 10, True),
        frequency_penalty=output_penalty("frequency_penalty", body.frequency_penalty),
        presence_penalty=output_penalty("presence_penalty", body.presence_penalty),
        seed=body.seed,
    )


def _stopping(body: schemas._Sampling, limits: RequestLimits, max_tokens: tuple[int | None, str]) -> StopRequest:
    max_new, field = max_tokens
    if max_new is not None and max_new < 1:
        raise InvalidParameter(field, "must be at least 1 (leave it unset for the default)")
    if body.min_tokens < 0 or (max_new is not None and body.min_tokens > max_new):
        raise InvalidParameter("min_tokens", f"must be in [0, {field}]")
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stops) > limits.max_stop_sequences:
        raise InvalidParameter("stop", f"at most {limits.max_stop_sequences}")
    for index, stop in enumerate(stops):
        if not 0 < len(stop) <= limits.max_stop_sequence_chars:
            raise InvalidParameter(f"stop[{index}]", f"must have 1 to {limits.max_stop_sequence_chars} characters")
    return StopRequest(
        max_new_tokens=max_new,
        min_new_tokens=body.min_tokens,
        stop_sequences=stops,
        include_stop_sequence=body.include_stop_str_in_output,
        ignore_eos=body.ignore_eos,
    )


# -- responses ------------------------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class LogprobWriter:
    """Token logprobs in OpenAI's two shapes; token strings come from the tokenizer, cached per id."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._tokenizer = tokenizer
        self._tokens: dict[int, str] = {}

    def token(self, token_id: int) -> str:
        text = self._tokens.get(token_id)
        if text is None:
            text = self._tokens[token_id] = self._tokenizer.decode([token_id], skip_special_tokens=False)
        return text

    def chat(self, items: Sequence[TokenLogprob]) -> dict:
        """`choices[].logprobs` of a chat completion (or chunk)."""
        return {"content": [self._chat_item(item.token_id, item.logprob, item.top) for item in items]}

    def _chat_item(self, token_id: int, logprob: float, top: Sequence[tuple[int, float]] = ()) -> dict:
        token = self.token(token_id)
        entry: dict = {"token": token, "logprob": logprob, "bytes": list(token.encode())}
        entry["top_logprobs"] = [
            {"token": (t := self.token(i)), "logprob": lp, "bytes": list(t.encode())} for i, lp in top
        ]
        return entry

    def completion(self, items: Sequence[TokenLogprob], text_offset: int = 0) -> dict:
        """`choices[].logprobs` of a text completion (or chunk); offsets count from `text_offset`."""
        tokens = [self.token(item.token_id) for item in items]
        offsets = []
        for token in tokens:
            offsets.append(text_offset)
            text_offset += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": [item.logprob for item in items],
            "top_logprobs": [{self.token(i): lp for i, lp in item.top} for item in items],
            "text_offset": offsets,
        }


def finish_reason(done: Completed) -> str:
    return FINISH_REASONS[done.finish_reason]
