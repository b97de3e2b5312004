"""One request's state inside a worker (`Sequence`) and what one engine step runs (`ScheduledBatch` of decodes
and `PrefillChunk`s). Pure Python, like the scheduler that owns them (`workers.engine.scheduler`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workers.protocol import Finish, Priority, SamplingParams, StoppingParams, Submit

if TYPE_CHECKING:  # the matcher's type only: this module stays pure Python
    from workers.engine.grammar import GrammarState


@dataclass(frozen=True, slots=True)
class ImageSpan:
    """Where one image's tokens sit in a prompt: positions [start, start + num_tokens), and the SHA-256 hex of the
    image's file, which keys every block holding them in the prefix cache."""

    start: int
    num_tokens: int
    content_hash: str

    @property
    def end(self) -> int:
        return self.start + self.num_tokens

    def overlaps(self, start: int, end: int) -> bool:
        """Whether any of positions [start, end) is one of this image's tokens."""
        return self.start < end and start < self.end


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    """One request inside the worker: its tokens, its progress through the model and its timings.

    `num_computed_tokens` counts the tokens whose K/V are in the cache. While prefilling it is below
    `prefill_target` (the prompt's length, or every token so far after a preemption); once decoding, it is
    `num_tokens - 1` (the newest token is the next input). `block_table[i]` holds its positions
    [i * block_size, (i + 1) * block_size); `block_hashes` are the chain hashes of its full computed blocks.
    """

    request_id: str
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    stopping: StoppingParams
    arrival_time: float
    priority: Priority = Priority.NORMAL
    deadline: float | None = None
    return_logprobs: bool = False
    top_logprobs: int = 0
    output_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    prefill_target: int = 0  # 0 at creation means the prompt's length; every token after a preemption
    slot: int | None = None  # the batch row while running
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)
    num_cached_tokens: int = 0  # tokens found in the prefix cache at the last admission
    num_preemptions: int = 0
    order: tuple[int, int] = (0, 0)  # (-priority, arrival index): the waiting queue's sort key
    status: SequenceStatus = SequenceStatus.WAITING
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish: Finish | None = None
    is_cancelled: bool = False
    images: tuple[ImageSpan, ...] = ()  # in prompt order
    # The model runner's state of a request with images (`workers.engine.multimodal.VisionState`): opaque here,
    # kept with the request through preemption.
    vision: Any = None
    grammar: GrammarState | None = None  # the output's constraint, if any (see workers.engine.grammar)

    @classmethod
    def from_submit(cls, submit: Submit, now: float) -> Sequence:
        return cls(
            request_id=submit.request_id,
            prompt_ids=tuple(submit.prompt_ids),
            sampling=submit.sampling,
            stopping=submit.stopping,
            arrival_time=now,
            priority=submit.priority,
            deadline=submit.deadline,
            return_logprobs=submit.return_logprobs,
            top_logprobs=submit.top_logprobs,
        )

    def __post_init__(self) -> None:
        self.prefill_target = self.prefill_target or len(self.prompt_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed_tokens < self.prefill_target

    def token_ids(self, start: int, end: int) -> tuple[int, ...]:
        """Tokens [start, end) of prompt + output."""
        prompt = self.prompt_ids
        if end <= len(prompt):
            return prompt[start:end]
        return (*prompt[start:], *self.output_ids[max(0, start - len(prompt)) : end - len(prompt)])

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def masked_token_ids(self) -> tuple[int, ...]:
        """Token ids that sampling must not pick now: EOS and stop ids until `min_new_tokens` tokens exist."""
        stopping = self.stopping
        if len(self.output_ids) >= stopping.min_new_tokens:
            return ()
        eos_ids = () if stopping.ignore_eos else stopping.eos_token_ids
        return tuple(dict.fromkeys((*eos_ids, *stopping.stop_token_ids)))


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """A run of tokens to prefill for one request, processed in one forward pass starting at position `start`.

    `is_first`: the first chunk since admission (the positions before `start` came from the prefix cache).
    """

    seq: Sequence
    start: int
    token_ids: tuple[int, ...]
    is_first: bool = False

    @property
    def is_last(self) -> bool:
        """Whether this chunk completes the prefill, so the model's output at its end gives the next token."""
        return self.start + len(self.token_ids) == self.seq.prefill_target


@dataclass(slots=True)
class ScheduledBatch:
    """What one step runs: one token for each decode, a chunk for each prefill; plus requests retired unrun."""

    decodes: list[Sequence] = field(default_factory=list)
    prefills: list[PrefillChunk] = field(default_factory=list)
    retired: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(len(chunk.token_ids) for chunk in self.prefills)

    @property
    def has_model_work(self) -> bool:
        return bool(self.decodes or self.prefills)
