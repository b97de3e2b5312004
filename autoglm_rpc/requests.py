"""Plain dataclasses for a generation request and the events of its life, behind the protobuf edge.

`convert.py` builds a `GenerationRequest` from either RPC's message (checking each field's range and naming the
field on failure); `frontend.py` resolves it against the served model and yields `GenerationEvent`s, which the
servicer turns back into protobuf. Nothing here knows about gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.protocol import FinishReason, Priority, TokenLogprob


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    messages: tuple[ChatMessage, ...]
    add_generation_prompt: bool = True


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
