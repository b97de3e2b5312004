"""A request's pending worker events, bounded so that a stream nobody reads cannot grow memory without bound.

The pool puts events (`RequestDelta`, `RequestFailed`, `ServiceError`) from the event loop, never blocking: the
pipe behind it serves every request on that worker, so one slow consumer must not hold up the others. The
request's consumer (the front end, paced by how fast gRPC can write to its client) takes them. While fewer than
`max_events` are pending, each event is queued as is. Once `max_events` are pending, a new delta is merged into
the last pending delta (token ids and logprobs concatenated), so nothing is lost and what a stalled stream holds
is bounded by its own output: at most `max_events` entries holding at most `max_new_tokens` token ids. The
consumer then receives several tokens in one event, which the front end handles like any multi-token step.
End events (a failure, or a delta that carries `finish`) are never merged into.
"""

from __future__ import annotations

import asyncio
import collections

from autoglm_rpc.core.errors import ServiceError
from workers.protocol import RequestDelta, RequestFailed

WorkerEvent = RequestDelta | RequestFailed | ServiceError


class EventBuffer:
    """Single consumer, single producer, both on the event loop. `num_merged` counts merged deltas."""

    def __init__(self, max_events: int) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        self.max_events = max_events
        self.num_merged = 0
        self._events: collections.deque[WorkerEvent] = collections.deque()
        self._has_events = asyncio.Event()

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: WorkerEvent) -> None:
        """Queue `event`, or merge it into the last pending delta when `max_events` are pending."""
        last = self._events[-1] if self._events else None
        if (
            len(self._events) >= self.max_events
            and isinstance(event, RequestDelta)
            and isinstance(last, RequestDelta)
            and last.finish is None
        ):
            # Tuple concatenation copies; a stalled stream is rare and bounded by its max_new_tokens.
            self._events[-1] = RequestDelta(
                request_id=last.request_id,
                token_ids=last.token_ids + event.token_ids,
                logprobs=last.logprobs + event.logprobs,
                finish=event.finish,
            )
            self.num_merged += 1
        else:
            self._events.append(event)
        self._has_events.set()

    async def get(self) -> WorkerEvent:
        """The oldest pending event; waits while there is none."""
        while not self._events:
            self._has_events.clear()
            await self._has_events.wait()
        return self._events.popleft()

    async def get_merged(self) -> WorkerEvent:
        """Like `get`, but every delta pending behind a delta comes merged into it (up to an end event).

        A consumer that fell behind (its writes are slower than the worker's steps) then takes what is waiting in
        one event, and pays the per-event work (text, one wire message) once for all of it.
        """
        event = await self.get()
        if not isinstance(event, RequestDelta) or event.finish is not None or not self._events:
            return event
        token_ids, logprobs, finish = list(event.token_ids), list(event.logprobs), None
        while self._events and isinstance(self._events[0], RequestDelta) and finish is None:
            later = self._events.popleft()
            assert isinstance(later, RequestDelta)
            token_ids.extend(later.token_ids)
            logprobs.extend(later.logprobs)
            finish = later.finish
        self.num_merged += 1
        return RequestDelta(event.request_id, tuple(token_ids), tuple(logprobs), finish)
