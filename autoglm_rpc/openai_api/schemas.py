"""Pydantic models of the OpenAI request and response bodies this server speaks (`/docs` shows them).

Requests parse what the OpenAI SDKs send; fields of OpenAI's API that this server does not implement are declared
so that setting them is refused with a 400 naming the field (see `openai_api/convert.py`) rather than silently
ignored; other unknown fields are ignored, as OpenAI's own server ignores them. The engine's extras (`top_k`,
`min_tokens`, `repetition_penalty`, `ignore_eos`, `skip_special_tokens`, `include_stop_str_in_output`) are
accepted as vLLM accepts them. Ranges are checked once, by the converter, with the same bounds as gRPC.

Types are strict, as OpenAI's own server takes them: `true` is not the integer 1 and `"0.5"` not a number (an
integer is a valid float). Every list stops at its first bad element (`fail_fast`), so a body of a million bad
elements costs one error, not a million; with the bound on a body's JSON values (`body.py`) that keeps
validation small on the event loop. The fields refused whenever set (`logit_bias`, `tools`) are not validated.

Responses are built as plain dicts on the hot path (a model per stream chunk costs CPU per token); the models here
document them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_FAIL_FAST = Field(fail_fast=True)
TokenIds = Annotated[list[int], _FAIL_FAST]
Texts = Annotated[list[str], _FAIL_FAST]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Body):
    include_usage: bool = False


class ImageUrl(_Body):
    url: str
    detail: str | None = None  # "auto", "low" or "high": accepted and ignored (the model has one resolution rule)


class ContentPart(_Body):
    type: str
    text: str | None = None
    image_url: ImageUrl | None = None


class ChatMessage(_Body):
    role: str
    content: str | Annotated[list[ContentPart], _FAIL_FAST] | None = None
    name: str | None = None


class JsonSchemaFormat(_Body):
    """`response_format.json_schema`: the schema is enforced whether `strict` is true or not."""

    name: str = ""
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    """OpenAI's `response_format`: `text` (no constraint), `json_object` (any JSON object) or `json_schema`."""

    type: str
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Body):
    """vLLM's `structured_outputs`: set one of json, regex, choice, grammar, json_object."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    # Not supported: a clear 400 when set (the disable_* backend switches are accepted and have no effect).
    whitespace_pattern: str | None = None
    structural_tag: Any = None


class _Sampling(_Body):
    """Fields both endpoints take."""

    model: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | Texts | None = None
    n: int = 1
    # OpenAI's additive penalties on generated tokens, in [-2, 2]; unset: 0 (off).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: Any = Field(None, json_schema_extra={"type": "object"})  # not supported: a 400 when set
    # The engine's extras, as vLLM accepts them.
    top_k: int | None = Field(default=None, description="0 or -1: off")
    min_tokens: int = 0
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # Constrained output (see openai_api/structured.py): OpenAI's response_format, vLLM's structured_outputs and
    # its older guided_* fields; at most one of them.
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_whitespace_pattern: str | None = None  # not supported: a clear 400 when set


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], _FAIL_FAST]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    # Not supported: a clear 400 when set.
    tools: Any = Field(None, json_schema_extra={"type": "array"})
    tool_choice: Any = None


class CompletionRequest(_Sampling):
    prompt: str | Texts | TokenIds | Annotated[list[TokenIds], _FAIL_FAST]
    logprobs: int | None = None
    echo: bool = False  # only false
    suffix: str | None = None  # not supported
    best_of: int | None = None  # only 1


# -- responses (documentation; the routes build the same shapes as dicts) ---------------------------------------

# "abort": the request was cancelled (CancelGeneration by its id) before it finished, as vLLM says it.
FinishReasonName = Literal["stop", "length", "abort"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: FinishReasonName


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReasonName


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail
