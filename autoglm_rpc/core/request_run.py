"""One admitted request's run: the worker's events in, the caller's text events out.

A `RequestRun` turns each worker delta (one step, or the steps a slow caller let pile up) into one `TextDelta`
through the request's `TextStream` (incremental detokenizing, stop sequences), ends with one `Completed` carrying
the timings, and maps a worker's refusal to the service's error taxonomy (`errors`). It does no I/O: the front end
feeds it and owns the request's place in the pool.
"""

from __future__ import annotations

import logging
import time

from autoglm_rpc.core import errors
from autoglm_rpc.core.requests import Completed, TextDelta, Timings
from autoglm_rpc.pool.pool import InFlight
from autoglm_rpc.text.output import TextStream
from workers.protocol import FailureReason, Finish, FinishReason, RequestDelta, RequestFailed, Submit, TokenLogprob

logger = logging.getLogger(__name__)


def _worker_failure(request_id: str, reason: FailureReason, message: str) -> errors.ServiceError:
    """The status a caller sees for a request its worker refused or could not run."""
    match reason:
        case FailureReason.GPU_OUT_OF_MEMORY:
            return errors.OutOfMemory(message)
        case FailureReason.PROMPT_TOO_LONG:
            return errors.PromptTooLong(message)
        case FailureReason.INVALID_PARAMETER:
            return errors.ServiceError(message, errors.Code.INVALID_ARGUMENT, "INVALID_PARAMETER")
        case FailureReason.DUPLICATE_REQUEST_ID:
            return errors.DuplicateRequestId(request_id)
    logger.error("request %s failed in its worker: %s", request_id, message)
    return errors.InternalError(request_id)


class RequestRun:
    """The state of one admitted request: turns worker events into text events."""

    def __init__(
        self, submit: Submit, flight: InFlight, arrival: float, text: TextStream, request_id: str
    ) -> None:
        self.submit = submit
        self.request_id = request_id  # as its caller knows it (the Submit's is scoped to the owner)
        self.flight = flight
        self.arrival = arrival
        self.submitted_at = time.monotonic()
        self.text = text
        self.logprobs: list[TokenLogprob] = []
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.is_done = False
        self.must_cancel = False  # the gateway ended it (stop sequence); the worker still runs it

    def handle(self, event: object) -> list[TextDelta | Completed]:
        match event:
            case errors.ServiceError():
                raise event
            case RequestFailed(reason=reason, message=message):
                raise _worker_failure(self.request_id, reason, message)
            case RequestDelta():
                return self._on_delta(event)
        raise TypeError(f"unexpected worker event {event!r}")

    def _on_delta(self, delta: RequestDelta) -> list[TextDelta | Completed]:
        """One worker delta (one step, or the steps a slow caller let pile up) is one `TextDelta`."""
        now = time.monotonic()
        events: list[TextDelta | Completed] = []
        if delta.token_ids:
            self.first_token_at = self.first_token_at or now
            self.last_token_at = now
            before = self.text.num_tokens
            piece = self.text.push(delta.token_ids)
            kept = self.text.num_tokens - before  # fewer than sent when a stop sequence ended the output
            token_logprobs = delta.logprobs[:kept]
            self.logprobs.extend(token_logprobs)
            events.append(TextDelta(piece, delta.token_ids[:kept], token_logprobs))
            if self.text.stop_sequence is not None:
                self.must_cancel = True
                events.append(self._complete(FinishReason.STOP_SEQUENCE, None))
                return events
        if delta.finish is not None:
            if delta.finish.reason is FinishReason.CANCELLED and not self.flight.is_cancelling:
                # Nobody asked for it: the worker dropped the request because the call's deadline passed.
                self.is_done = True
                raise errors.DeadlineExceeded()
            tail = self.text.flush()
            if tail:
                events.append(TextDelta(tail))
            events.append(self._complete(delta.finish.reason, delta.finish))
        return events

    def _complete(self, reason: FinishReason, finish: Finish | None) -> Completed:
        self.is_done = True
        now = time.monotonic()
        first = self.first_token_at or now
        # Queue time: the gateway's share (tokenizing, admission) plus the wait in the worker.
        worker_queue_time = (self.submitted_at - self.arrival) + (finish.queue_time if finish else 0.0)
        return Completed(
            finish_reason=reason,
            text=self.text.text,
            token_ids=tuple(self.text.token_ids),
            logprobs=tuple(self.logprobs[: len(self.text.token_ids)]),
            prompt_tokens=len(self.submit.prompt_ids),
            seed=self.submit.sampling.seed,
            timings=Timings(
                queue_time=worker_queue_time,
                time_to_first_token=first - self.arrival,
                decode_time=(self.last_token_at or now) - first,
                total_time=now - self.arrival,
            ),
            stop_sequence=self.text.stop_sequence,
            stop_token_id=finish.stop_token_id if finish else None,
        )
