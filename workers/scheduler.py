"""Request state and the batching policy of one worker. Pure Python: no torch, so the policy is tested alone.

The policy, step by step. Every running request owns one KV-cache slot from admission to finish, so a request
that was admitted never runs out of cache and nothing is ever preempted. At each step the scheduler first
retires requests that must leave: cancelled ones, ones past their deadline (both end CANCELLED) and ones past
`max_generation_time` (TIME_LIMIT); their slots are free for this very step. It then spends the step's token
budget (`max_num_batched_tokens`) in three passes:

1. every running request that is decoding gets its one token, unconditionally, so streams already producing
   tokens never stall behind a prompt;
2. running requests whose prompt is still partly unprocessed continue it, in admission order, with as many
   prompt tokens as the budget has left (a chunk);
3. waiting requests are admitted, highest priority first and first-come first-served within a priority, while
   a slot is free and budget remains; each starts its prompt with a chunk that fits the budget.

A long prompt is thus spread over several steps (chunked prefill) while the decodes around it keep running.
The budget must be at least `max_batch_size` so that the decode pass always fits.

After the model ran, `postprocess` appends the sampled tokens and decides which requests finish: an EOS token
(unless `ignore_eos`), a caller's stop token, `max_new_tokens`, the context limit, the time limit or the
deadline. A request's last chunk of prompt produces its first token. Finished requests free their slot at once.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from workers.protocol import Finish, FinishReason, Priority, SamplingParams, StoppingParams, Submit

logger = logging.getLogger(__name__)


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    """One request inside the worker: its tokens, its progress through the model and its timings.

    `num_computed_tokens` counts the tokens whose K/V are in the cache. While the prompt is being processed it is
    below `num_prompt_tokens`; once decoding, it is `num_tokens - 1` (the newest token is the next input).
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
    slot: int | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish: Finish | None = None
    is_cancelled: bool = False

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

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed_tokens < len(self.prompt_ids)

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
    """A run of prompt tokens of one request, processed in one forward pass starting at position `start`."""

    seq: Sequence
    start: int
    token_ids: tuple[int, ...]

    @property
    def is_last(self) -> bool:
        """Whether this chunk completes the prompt, so the model's output at its end gives the first token."""
        return self.start + len(self.token_ids) == self.seq.num_prompt_tokens


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


class Scheduler:
    """Owns every in-flight `Sequence`, the waiting queue, the running set and the KV slot allocator.

    The caller (the engine) drives it: `add` and `cancel` at any time, then per step `schedule(now)`, run the
    model, `postprocess(sampled, now)`; `abort` removes a request that failed.
    """

    def __init__(self, max_batch_size: int, max_seq_len: int, max_num_batched_tokens: int) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len must be at least 2, got {max_seq_len}")
        if max_num_batched_tokens < max_batch_size:
            raise ValueError(
                f"max_num_batched_tokens ({max_num_batched_tokens}) must be at least max_batch_size "
                f"({max_batch_size}) so that every running request can decode in each step"
            )
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.max_num_batched_tokens = max_num_batched_tokens
        self.requests: dict[str, Sequence] = {}
        # Sorted by (-priority, arrival order): the head is the next to admit.
        self._waiting: list[tuple[int, int, Sequence]] = []
        self._arrivals = itertools.count()
        self.running: list[Sequence] = []  # in admission order
        self._free_slots = list(range(max_batch_size))  # a min-heap: the lowest free slot is reused first

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def waiting(self) -> list[Sequence]:
        """The waiting requests in admission order."""
        return [seq for _, _, seq in self._waiting]

    def has_work(self) -> bool:
        return bool(self.requests)

    def add(self, seq: Sequence) -> None:
        """Queue a new request. The caller has checked that its id is not in flight and its prompt fits."""
        if seq.request_id in self.requests:
            raise ValueError(f"request id {seq.request_id!r} is already in flight")
        self.requests[seq.request_id] = seq
        bisect.insort(self._waiting, (-int(seq.priority), next(self._arrivals), seq), key=lambda e: e[:2])

    def cancel(self, request_ids: Iterable[str]) -> None:
        """Mark requests cancelled; they leave at the next `schedule`. Unknown ids are ignored."""
        for request_id in request_ids:
            seq = self.requests.get(request_id)
            if seq is not None:
                seq.is_cancelled = True

    def abort(self, seq: Sequence) -> None:
        """Remove a request that failed, without a finish reason, and free its slot."""
        if seq.status is SequenceStatus.WAITING:
            self._waiting = [entry for entry in self._waiting if entry[2] is not seq]
        self._release(seq)

    def schedule(self, now: float) -> ScheduledBatch:
        """Retire leaving requests, then fill this step's token budget (see the module docstring)."""
        batch = ScheduledBatch(retired=self._retire_expired(now))
        budget = self.max_num_batched_tokens
        batch.decodes = [seq for seq in self.running if not seq.is_prefilling]
        budget -= len(batch.decodes)
        for seq in self.running:
            if budget <= 0:
                break
            if seq.is_prefilling:
                batch.prefills.append(self._chunk(seq, budget))
                budget -= len(batch.prefills[-1].token_ids)
        while budget > 0 and self._waiting and self._free_slots:
            seq = self._waiting.pop(0)[2]
            self._admit(seq, now)
            batch.prefills.append(self._chunk(seq, budget))
            budget -= len(batch.prefills[-1].token_ids)
        return batch

    def postprocess(
        self, batch: ScheduledBatch, sampled: Iterable[tuple[Sequence, int]], now: float
    ) -> list[Sequence]:
        """Advance what ran, append each sampled token and finish the requests that must stop.

        `sampled` pairs each request that produced a token (decodes, and prefills whose last chunk ran) with its
        token. Returns the requests that finished in this call; their slots are already free.
        """
        for seq in batch.decodes:
            seq.num_computed_tokens += 1
        for chunk in batch.prefills:
            chunk.seq.num_computed_tokens += len(chunk.token_ids)
        finished = []
        for seq, token_id in sampled:
            if seq.is_finished:
                continue
            seq.output_ids.append(token_id)
            if seq.first_token_time is None:
                seq.first_token_time = now
            finish = self._stop_reason(seq, token_id, now)
            if finish is not None:
                self._finish(seq, *finish, now=now)
                finished.append(seq)
        return finished

    def _admit(self, seq: Sequence, now: float) -> None:
        seq.slot = heapq.heappop(self._free_slots)
        seq.status = SequenceStatus.RUNNING
        seq.first_scheduled_time = now
        self.running.append(seq)

    def _chunk(self, seq: Sequence, budget: int) -> PrefillChunk:
        start = seq.num_computed_tokens
        end = min(seq.num_prompt_tokens, start + budget)
        return PrefillChunk(seq=seq, start=start, token_ids=seq.prompt_ids[start:end])

    def _retire_expired(self, now: float) -> list[Sequence]:
        retired = []
        for seq in [*self.running, *self.waiting]:
            reason = self._expiry_reason(seq, now)
            if reason is not None:
                if seq.status is SequenceStatus.WAITING:
                    self._waiting = [entry for entry in self._waiting if entry[2] is not seq]
                self._finish(seq, reason, None, now)
                retired.append(seq)
        return retired

    @staticmethod
    def _expiry_reason(seq: Sequence, now: float) -> FinishReason | None:
        """Why a request must leave regardless of its tokens: cancelled, past its deadline, or out of time."""
        if seq.is_cancelled or (seq.deadline is not None and now >= seq.deadline):
            return FinishReason.CANCELLED
        limit = seq.stopping.max_generation_time
        if limit is not None and now - seq.arrival_time >= limit:
            return FinishReason.TIME_LIMIT
        return None

    def _stop_reason(self, seq: Sequence, token_id: int, now: float) -> tuple[FinishReason, int | None] | None:
        """The finish a just-appended token causes, if any. Token-based reasons win over the limits."""
        stopping = seq.stopping
        num_generated = len(seq.output_ids)
        if num_generated >= stopping.min_new_tokens:
            if not stopping.ignore_eos and token_id in stopping.eos_token_ids:
                return FinishReason.EOS_TOKEN, token_id
            if token_id in stopping.stop_token_ids:
                return FinishReason.STOP_SEQUENCE, token_id
        if num_generated >= stopping.max_new_tokens:
            return FinishReason.MAX_NEW_TOKENS, None
        if seq.num_tokens >= self.max_seq_len:
            return FinishReason.CONTEXT_LIMIT, None
        reason = self._expiry_reason(seq, now)
        return None if reason is None else (reason, None)

    def _finish(self, seq: Sequence, reason: FinishReason, stop_token_id: int | None, now: float) -> None:
        scheduled = seq.first_scheduled_time if seq.first_scheduled_time is not None else now
        first_token = seq.first_token_time if seq.first_token_time is not None else now
        seq.finish = Finish(
            reason=reason,
            stop_token_id=stop_token_id,
            queue_time=scheduled - seq.arrival_time,
            prefill_time=first_token - scheduled,
            decode_time=now - first_token,
        )
        self._release(seq)

    def _release(self, seq: Sequence) -> None:
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            heapq.heappush(self._free_slots, seq.slot)
        seq.status = SequenceStatus.FINISHED
        seq.slot = None
        self.requests.pop(seq.request_id, None)
        logger.debug("request %s left (%s)", seq.request_id, seq.finish)
