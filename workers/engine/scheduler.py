"""The batching policy of one worker (request state: `workers.engine.sequence`). Pure Python: no torch, so the
policy is tested alone.

KV memory is paged (see `workers.kv.blocks`): a running request holds a block table, and blocks are allocated
as its tokens are computed, so a short request holds a few blocks rather than the whole context. Each running
request also holds a batch row (`Sequence.slot`, 0 to max_batch_size - 1): the row of the static decode buffers
and of the repetition-penalty token history. The policy, step by step. The scheduler first retires requests
that must leave: cancelled ones, ones past their deadline (both end CANCELLED) and ones past
`max_generation_time` (TIME_LIMIT); their blocks are free for this very step. It then spends the step's token
budget (`max_num_batched_tokens`) in passes:

1. every running request that is decoding gets its one token, unconditionally, so streams already producing
   tokens never stall behind a prompt;
2. running requests whose prompt is still partly unprocessed continue it, in priority then admission order,
   with as many prompt tokens as the budget and the free blocks allow (a chunk);
3. waiting requests are admitted, highest priority first and first-come first-served within a priority, while
   a row is free, budget remains, and the blocks its whole prompt needs (less those found in the prefix cache)
   are free; each starts its prompt with a chunk that fits the budget.

Preemption by recomputation: when a running request needs a block and none is free, the lowest-priority,
most recently admitted request of those not yet scheduled in this step (possibly itself) is preempted: its
blocks are released and it goes back to the head of its priority in the waiting queue, keeping its tokens.
When admitted again it prefills its prompt and the tokens it already produced (most of it found again in the
prefix cache when its blocks were not evicted meanwhile), and its last chunk produces its next token: it resumes
with exactly the tokens it would have produced. No request is admitted in a step that preempted one. Why
recomputation and not swapping: docs/kv-cache.md.

A long prompt is thus spread over several steps (chunked prefill) while the decodes around it keep running.
The budget must be at least `max_batch_size` so that the decode pass always fits.

After the model ran, `postprocess` appends the sampled tokens, registers the blocks that became full in the
prefix cache, and decides which requests finish: an EOS token (unless `ignore_eos`), a caller's stop token,
`max_new_tokens`, the context limit, the time limit or the deadline. A request's last chunk of prefill produces
its next token. Finished requests free their blocks at once.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
from collections.abc import Iterable

from workers.engine.block_tables import BlockTables
from workers.engine.sequence import PrefillChunk, ScheduledBatch, Sequence, SequenceStatus
from workers.kv.blocks import DEFAULT_BLOCK_SIZE, BlockPool, PrefixStats, blocks_for
from workers.protocol import Finish, FinishReason

logger = logging.getLogger(__name__)


class Scheduler:
    """Owns every in-flight `Sequence`, the waiting queue, the running set, the batch rows and the KV blocks.

    The caller (the engine) drives it: `add` and `cancel` at any time, then per step `schedule(now)`, run the
    model, `postprocess(sampled, now)`; `abort` removes a request that failed. Without a `pool` the cache is
    sized so that every row holds a full context (no preemption): what unit tests of the policy alone use.
    """

    def __init__(
        self, max_batch_size: int, max_seq_len: int, max_num_batched_tokens: int, pool: BlockPool | None = None
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len must be at least 2, got {max_seq_len}")
        if max_num_batched_tokens < max_batch_size:
            raise ValueError(
                f"max_num_batched_tokens ({max_num_batched_tokens}) must be at least max_batch_size "
                f"({max_batch_size}) so that every running request can decode in each step"
            )
        if pool is None:
            pool = BlockPool(1 + max_batch_size * blocks_for(max_seq_len, DEFAULT_BLOCK_SIZE), DEFAULT_BLOCK_SIZE)
        if max_seq_len > pool.capacity * pool.block_size:
            raise ValueError(
                f"max_seq_len {max_seq_len} exceeds the KV cache's {pool.capacity * pool.block_size} tokens: "
                "a request alone must fit"
            )
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.max_num_batched_tokens = max_num_batched_tokens
        self.pool = pool
        self.blocks = BlockTables(pool)
        self.stats = PrefixStats()
        self.requests: dict[str, Sequence] = {}
        self._waiting: list[Sequence] = []  # sorted by Sequence.order: the head is the next to admit
        self._arrivals = itertools.count()
        self.running: list[Sequence] = []  # in admission order
        self._free_rows = list(range(max_batch_size))  # a min-heap: the lowest free row is reused first

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def waiting(self) -> list[Sequence]:
        """The waiting requests in admission order."""
        return list(self._waiting)

    def has_work(self) -> bool:
        return bool(self.requests)

    def add(self, seq: Sequence) -> None:
        """Queue a new request. The caller has checked that its id is not in flight and its prompt fits."""
        if seq.request_id in self.requests:
            raise ValueError(f"request id {seq.request_id!r} is already in flight")
        self.requests[seq.request_id] = seq
        seq.order = (-int(seq.priority), next(self._arrivals))
        bisect.insort(self._waiting, seq, key=lambda s: s.order)

    def cancel(self, request_ids: Iterable[str]) -> None:
        """Mark requests cancelled; they leave at the next `schedule`. Unknown ids are ignored."""
        for request_id in request_ids:
            seq = self.requests.get(request_id)
            if seq is not None:
                seq.is_cancelled = True

    def withdraw(self, count: int) -> list[str]:
        """Take up to `count` requests that were never admitted out of the waiting queue, from its tail (lowest
        priority, newest first), and return their ids; they leave without a finish (the gateway routes them to
        another worker). A preempted request was admitted once, has produced tokens, and stays."""
        never_admitted = [
            s for s in reversed(self._waiting) if s.first_scheduled_time is None and not s.is_cancelled
        ]
        taken = never_admitted[: max(count, 0)]
        for seq in taken:
            self._waiting.remove(seq)
            del self.requests[seq.request_id]
        return [seq.request_id for seq in taken]

    def abort(self, seq: Sequence) -> None:
        """Remove a request that failed, without a finish reason, and free its blocks."""
        if seq.status is SequenceStatus.WAITING:
            self._waiting.remove(seq)
        self._release(seq)

    def schedule(self, now: float) -> ScheduledBatch:
        """Retire leaving requests, then fill this step's token budget (see the module docstring)."""
        batch = ScheduledBatch(retired=self._retire_expired(now))
        budget = self.max_num_batched_tokens
        by_priority = sorted(self.running, key=lambda s: s.order[0])  # stable: admission order within a priority
        queue = [s for s in by_priority if not s.is_prefilling] + [s for s in by_priority if s.is_prefilling]
        preempted = False
        while queue:
            seq = queue.pop(0)
            wanted = seq.prefill_target - seq.num_computed_tokens if seq.is_prefilling else 1
            if seq.is_prefilling and budget <= 0:
                continue
            num_tokens, preempted_now = self._reserve(seq, min(wanted, max(budget, 1)), queue)
            preempted |= preempted_now
            if num_tokens == 0:
                continue
            budget -= num_tokens
            if seq.is_prefilling:
                batch.prefills.append(self._chunk(seq, num_tokens, is_first=False))
            else:
                batch.decodes.append(seq)
        while (
            not preempted
            and budget > 0
            and self._waiting
            and self._free_rows
            and self._admit(self._waiting[0], now)
        ):
            seq = self._waiting.pop(0)
            num_tokens = min(budget, seq.prefill_target - seq.num_computed_tokens)
            self.blocks.grow(seq, seq.num_computed_tokens + num_tokens)
            batch.prefills.append(self._chunk(seq, num_tokens, is_first=True))
            budget -= num_tokens
        return batch

    def postprocess(
        self, batch: ScheduledBatch, sampled: Iterable[tuple[Sequence, int]], now: float
    ) -> list[Sequence]:
        """Advance what ran, cache its newly full blocks, append each sampled token and finish the requests that
        must stop.

        `sampled` pairs each request that produced a token (decodes, and prefills whose last chunk ran) with its
        token. Returns the requests that finished in this call; their blocks are already released.
        """
        advanced = [(seq, 1) for seq in batch.decodes] + [(c.seq, len(c.token_ids)) for c in batch.prefills]
        for seq, num_tokens in advanced:
            if not seq.is_finished:  # a request that failed in this step was aborted: its blocks are gone
                seq.num_computed_tokens += num_tokens
                self.blocks.cache_full_blocks(seq)
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

    def _admit(self, seq: Sequence, now: float) -> bool:
        """Admit `seq` if the blocks of its whole prefill (less its cached prefix) are free; takes the prefix."""
        if not self.blocks.try_admit(seq):
            return False
        if seq.num_preemptions == 0:
            self.stats.record(seq.num_prompt_tokens, seq.num_cached_tokens)
        seq.slot = heapq.heappop(self._free_rows)
        seq.status = SequenceStatus.RUNNING
        if seq.first_scheduled_time is None:
            seq.first_scheduled_time = now
        self.running.append(seq)
        return True

    def _reserve(self, seq: Sequence, wanted: int, queue: list[Sequence]) -> tuple[int, bool]:
        """Blocks for up to `wanted` more tokens of a running request, preempting from the end of `queue` (the
        requests not yet scheduled this step, lowest priority last) and finally `seq` itself when none is free.
        Returns (tokens reserved, whether a request was preempted); 0 tokens means `seq` was preempted."""
        preempted = False
        while True:
            room = self.blocks.room(seq)
            if room >= 1:
                break
            victim = queue.pop() if queue else seq
            self._preempt(victim)
            preempted = True
            if victim is seq:
                return 0, True
        num_tokens = min(wanted, room)
        self.blocks.grow(seq, seq.num_computed_tokens + num_tokens)
        return num_tokens, preempted

    def _preempt(self, seq: Sequence) -> None:
        """Free a running request's blocks and row and queue it again; it recomputes its tokens when readmitted."""
        logger.info("preempting request %s at %d tokens: the KV cache is full", seq.request_id, seq.num_tokens)
        self._release_blocks(seq)
        seq.num_computed_tokens = 0
        seq.prefill_target = seq.num_tokens
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.stats.num_preemptions += 1
        bisect.insort(self._waiting, seq, key=lambda s: s.order)

    def _chunk(self, seq: Sequence, num_tokens: int, is_first: bool) -> PrefillChunk:
        start = seq.num_computed_tokens
        return PrefillChunk(
            seq=seq, start=start, token_ids=seq.token_ids(start, start + num_tokens), is_first=is_first
        )

    def _retire_expired(self, now: float) -> list[Sequence]:
        retired = []
        for seq in [*self.running, *self.waiting]:
            reason = self._expiry_reason(seq, now)
            if reason is not None:
                if seq.status is SequenceStatus.WAITING:
                    self._waiting.remove(seq)
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
            self._release_blocks(seq)
        seq.status = SequenceStatus.FINISHED
        self.requests.pop(seq.request_id, None)
        logger.debug("request %s left (%s)", seq.request_id, seq.finish)

    def _release_blocks(self, seq: Sequence) -> None:
        self.running.remove(seq)
        heapq.heappush(self._free_rows, seq.slot)
        self.blocks.release(seq)
        seq.slot = None
