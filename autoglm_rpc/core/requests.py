"""Plain dataclasses for a generation request and the events of its life, behind each protocol's edge.

`grpc_api/convert.py` builds a `GenerationRequest` from either RPC's message, `openai_api/convert.py` from an
HTTP body, each checking every field's range against the bounds here and naming the field on failure;
`frontend.py` resolves it against the served model and yields `GenerationEvent`s, which the servicer (or the
HTTP route) turns back into its wire format. Nothing here knows about gRPC or HTTP.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from autoglm_rpc.core.errors import InvalidParameter
from workers.protocol import Constraint, FinishReason, Priority, TokenLogprob

# Fixed bounds of request fields, the same for every protocol; the configurable ones are `RequestLimits`
# (settings max_stop_sequences, ...).
MAX_REQUEST_ID_CHARS = 128
MAX_MODEL_NAME_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_PROMPT_TOKEN_IDS = 1_000_000
MAX_CHAT_MESSAGES = 1024
MAX_MESSAGE_PARTS = 1024  # content parts of one chat message
MAX_ROLE_CHARS = 64
MAX_TOP_K = 1_000_000
MAX_OUTPUT_PENALTY = 2.0  # frequency_penalty and presence_penalty lie in [-2, 2], as in OpenAI's API


def model_name(value: str, field: str = "model") -> str:
    """The `model` field: empty (the served model) or a name of sensible length (it is echoed in errors)."""
    if len(value) > MAX_MODEL_NAME_CHARS:
        raise InvalidParameter(field, f"at most {MAX_MODEL_NAME_CHARS} characters")
    return value


def request_id(value: str, field: str) -> str:
    """A caller's request id: empty, or up to 128 printable ASCII characters."""
    if len(value) > MAX_REQUEST_ID_CHARS:
        raise InvalidParameter(field, f"at most {MAX_REQUEST_ID_CHARS} characters")
    if value and not (value.isascii() and value.isprintable()):
        raise InvalidParameter(field, "printable ASCII characters only")
    return value


def in_range(field: str, value: float, low: float, high: float, low_open: bool = False) -> float:
    """`value` if it lies in [low, high] (or (low, high]); else InvalidParameter naming `field`."""
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise InvalidParameter(field, f"must be in {bracket}{low:g}, {high:g}], got {value:g}")
    return value


def output_penalty(field: str, value: float | None) -> float | None:
    """A frequency or presence penalty: unset (None), or in [-2, 2]; else InvalidParameter naming `field`."""
    return None if value is None else in_range(field, value, -MAX_OUTPUT_PENALTY, MAX_OUTPUT_PENALTY)


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image of a chat message, as its edge received it: a URL (HTTP: `data:` or `file://`) or the file's
    bytes (gRPC, with the declared media type, empty when not given). `field` is how the caller's protocol names
    this part (`messages[1].content[0]`, `chat.messages[1].parts[0].image`): every error about it names that."""

    field: str
    url: str = ""
    data: bytes = b""
    media_type: str = ""


ContentPart = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn: `content` (text), or `parts` (text and images in order, `content` then empty). The edges set
    parts only for a message with an image; a message of text parts alone arrives as their joined text."""

    role: str
    content: str
    parts: tuple[ContentPart, ...] = ()

    @property
    def num_chars(self) -> int:
        """Characters of text, content and text parts together (what the prompt-size check counts)."""
        return len(self.content) + sum(len(part.text) for part in self.parts if isinstance(part, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(part for part in self.parts if isinstance(part, ImagePart))

    @property
    def display_text(self) -> str:
        """The text, each image as `<image>` (for logs, which never hold an image's bytes)."""
        if not self.parts:
            return self.content
        return "".join(part.text if isinstance(part, TextPart) else "<image>" for part in self.parts)


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    messages: tuple[ChatMessage, ...]
    add_generation_prompt: bool = True

    @property
    def images(self) -> tuple[ImagePart, ...]:
        """Every image part, in prompt order."""
        return tuple(image for message in self.messages if message.parts for image in message.images)


@dataclass(frozen=True, slots=True)
class TokenPrompt:
    ids: tuple[int, ...]


Prompt = str | ChatPrompt | TokenPrompt


@dataclass(frozen=True, slots=True)
class SamplingOverrides:
    """The caller's sampling options; None means "use the checkpoint's default"."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class StopRequest:
    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    stop_sequences: tuple[str, ...] = ()
    include_stop_sequence: bool = False
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    max_generation_time: float | None = None


@dataclass(frozen=True, slots=True)
class OutputRequest:
    return_token_ids: bool = False
    return_logprobs: bool = False
    top_logprobs: int = 0
    skip_special_tokens: bool = True


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The configurable bounds on request fields (settings of the same names); fixed ones live in convert.py."""

    max_stop_sequences: int = 16
    max_stop_sequence_chars: int = 256
    max_top_logprobs: int = 20


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A validated Generate / GenerateStream call. `request_id` is empty when the caller gave none."""

    prompt: Prompt
    request_id: str = ""
    model: str = ""
    sampling: SamplingOverrides = field(default_factory=SamplingOverrides)
    stopping: StopRequest = field(default_factory=StopRequest)
    output: OutputRequest = field(default_factory=OutputRequest)
    priority: Priority = Priority.NORMAL
    min_tokens_per_message: int = 1
    constraint: Constraint | None = None  # the output's language, checked at the edge (core/constraints.py)


# ---------------------------------------------------------------------------------------------------------------
# Events, in the order a request yields them: Admitted, then TextDelta*, then Completed.
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admitted:
    """The request was routed to a worker."""

    request_id: str
    model: str
    prompt_tokens: int
    seed: int


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New output: whole characters of text, and the tokens that produced it (token ids may run ahead of text)."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds; see `autoglm.v1.Timing`."""

    queue_time: float
    time_to_first_token: float
    decode_time: float
    total_time: float


@dataclass(frozen=True, slots=True)
class Completed:
    """The request ended normally. `text` and `token_ids` are the whole output."""

    finish_reason: FinishReason
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...]
    prompt_tokens: int
    seed: int
    timings: Timings
    stop_sequence: str | None = None
    stop_token_id: int | None = None


GenerationEvent = Admitted | TextDelta | Completed


class GenerationObserver(Protocol):
    """What watches a request from outside the data path (telemetry): told, never asked.

    `admitting()` is entered while the request is handed to a worker (the observer's trace context is then the
    current one, so what routing records, and the carrier sent to the worker, descend from it); `saw` gets every
    event as it is yielded; `ended` gets what ended the request: None, the error, or GeneratorExit /
    CancelledError when the caller went away.
    """

    def admitting(self) -> AbstractContextManager[object]: ...

    def saw(self, event: GenerationEvent) -> None: ...

    def ended(self, error: BaseException | None) -> None: ...


class _NoObserver:
    def admitting(self) -> AbstractContextManager[object]:
        return nullcontext()

    def saw(self, event: GenerationEvent) -> None:
        pass

    def ended(self, error: BaseException | None) -> None:
        pass


NO_OBSERVER: GenerationObserver = _NoObserver()
