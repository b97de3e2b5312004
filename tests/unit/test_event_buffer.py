"""A stream's pending events stay bounded when nobody reads them, and nothing is lost."""

from __future__ import annotations

import asyncio

import pytest

from autoglm_rpc.core.errors import WorkerCrashed
from autoglm_rpc.pool.buffer import EventBuffer
from workers.protocol import Finish, FinishReason, RequestDelta, TokenLogprob


def _delta(token_id: int, finish: Finish | None = None) -> RequestDelta:
    return RequestDelta("r", (token_id,), (TokenLogprob(token_id, -float(token_id)),), finish)


def test_past_the_limit_deltas_merge_into_the_last_one() -> None:
    async def scenario() -> None:
        buffer = EventBuffer(max_events=3)
        for token_id in range(100):
            buffer.put(_delta(token_id))
        buffer.put(_delta(100, Finish(FinishReason.MAX_NEW_TOKENS)))
        assert len(buffer) == 3
        assert buffer.num_merged == 98
        events = [await buffer.get() for _ in range(3)]
        assert [t for e in events for t in e.token_ids] == list(range(101))
        assert [lp.token_id for e in events for lp in e.logprobs] == list(range(101))
        assert events[-1].finish == Finish(FinishReason.MAX_NEW_TOKENS)

    asyncio.run(scenario())


def test_end_events_are_never_merged_and_a_waiting_reader_wakes() -> None:
    async def scenario() -> None:
        buffer = EventBuffer(max_events=1)
        reader = asyncio.ensure_future(buffer.get())
        await asyncio.sleep(0)
        buffer.put(_delta(1))
        assert (await reader).token_ids == (1,)
        buffer.put(_delta(2))
        buffer.put(WorkerCrashed(0))  # a failure is appended even past the limit
        assert len(buffer) == 2
        assert (await buffer.get()).token_ids == (2,)
        assert isinstance(await buffer.get(), WorkerCrashed)

    asyncio.run(scenario())


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_events"):
        EventBuffer(0)


def test_a_reader_that_fell_behind_takes_the_pending_deltas_merged() -> None:
    async def scenario() -> None:
        buffer = EventBuffer(max_events=64)
        for token_id in range(5):
            buffer.put(_delta(token_id))
        buffer.put(_delta(5, Finish(FinishReason.EOS_TOKEN)))
        buffer.put(WorkerCrashed(0))  # nothing follows an end in practice; it shows the merge stops there
        merged = await buffer.get_merged()
        assert merged.token_ids == tuple(range(6)) and [lp.token_id for lp in merged.logprobs] == list(range(6))
        assert merged.finish == Finish(FinishReason.EOS_TOKEN) and buffer.num_merged == 1
        assert isinstance(await buffer.get_merged(), WorkerCrashed)
        buffer.put(_delta(7))
        assert (await buffer.get_merged()).token_ids == (7,)  # alone: as it came

    asyncio.run(scenario())
