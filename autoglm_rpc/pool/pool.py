"""The worker pool: starts the workers, admits and routes requests, and fans worker output out per request.

Admission: a request is refused with QUEUE_FULL when the requests in flight reach the capacity, which is the
running batches of the ready workers (`max_batch_size` each) plus `max_queue_depth` waiting requests. Routing:
the ready worker with the fewest requests in flight. Each admitted request gets an `asyncio.Queue` that receives
its `RequestDelta`s, a `RequestFailed`, or a `ServiceError` (its worker died). A request stays counted against
its worker until the worker reports it finished, even if its caller has gone, so the accounting stays true.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from autoglm_rpc.errors import DuplicateRequestId, NoReadyWorker, QueueFull, ServiceError, WorkerCrashed
from autoglm_rpc.pool.handle import WorkerHandle, WorkerState
from workers.protocol import (
    Cancel,
    LoadProgress,
    ModelInfo,
    Ready,
    RequestDelta,
    RequestFailed,
    StepOutput,
    Submit,
    WorkerConfig,
    WorkerFailed,
    WorkerMessage,
)

logger = logging.getLogger(__name__)

WorkerEvent = RequestDelta | RequestFailed | ServiceError
# How many finished request ids are remembered, so CancelGeneration can say ALREADY_FINISHED.
_FINISHED_MEMORY = 10_000


class PoolObserver(Protocol):
    """Telemetry's view of the pool: `routed` may return the Submit with trace context to send instead."""

    def routed(self, submit: Submit, worker: WorkerHandle) -> Submit: ...

    def stepped(self, worker: WorkerHandle, output: StepOutput) -> None: ...


@dataclass(eq=False)
class InFlight:
    """A request routed to a worker and not yet reported finished by it."""

    request_id: str
    worker: WorkerHandle
    events: asyncio.Queue[WorkerEvent] = field(default_factory=asyncio.Queue)
    is_listening: bool = True  # False once the caller has its answer (or has gone): events are dropped
    is_cancelling: bool = False


class WorkerPool:
    """Owns the worker processes. All methods run on the event loop thread."""

    def __init__(self, configs: list[WorkerConfig], max_queue_depth: int) -> None:
        if not configs:
            raise ValueError("workers: at least one worker is needed")
        self._configs = configs
        self._max_queue_depth = max_queue_depth
        self._workers: list[WorkerHandle] = []
        self._in_flight: dict[str, InFlight] = {}
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._state_changed = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []
        self._is_stopping = False
        self.observer: PoolObserver | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for config in self._configs:
            worker = WorkerHandle(config, loop, self._on_message, self._on_exit)
            self._workers.append(worker)
            worker.start()

    async def wait_until_settled(self, timeout: float) -> None:
        """Wait until at least one worker is ready or none can become so; raise TimeoutError past `timeout`."""
        async with asyncio.timeout(timeout):
            while not self.num_ready and any(w.state is WorkerState.STARTING for w in self._workers):
                self._state_changed.clear()
                await self._state_changed.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        """Shut every worker down (terminating any that do not exit in time); in-flight requests fail."""
        self._is_stopping = True
        await asyncio.gather(*(w.stop(timeout) for w in self._workers))

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the loop) whenever a worker becomes ready or goes away."""
        self._listeners.append(callback)

    # -- facts --------------------------------------------------------------------------------------------------

    @property
    def num_ready(self) -> int:
        return sum(w.is_ready for w in self._workers)

    @property
    def num_workers(self) -> int:
        return len(self._configs)

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def max_queue_depth(self) -> int:
        return self._max_queue_depth

    @property
    def model(self) -> ModelInfo | None:
        """The model facts reported by a ready worker (every worker serves the same model)."""
        return next((w.model for w in self._workers if w.is_ready), None)

    @property
    def workers(self) -> tuple[WorkerHandle, ...]:
        return tuple(self._workers)

    # -- requests -----------------------------------------------------------------------------------------------

    def submit(self, submit: Submit) -> InFlight:
        """Admit and route one request; raise NoReadyWorker, QueueFull or DuplicateRequestId."""
        if submit.request_id in self._in_flight:
            raise DuplicateRequestId(submit.request_id)
        ready = [w for w in self._workers if w.is_ready]
        if not ready:
            raise NoReadyWorker()
        # A worker's batch is the number of KV-cache slots it got, which can be under max_batch_size.
        capacity = sum(w.model.max_batch_size for w in ready if w.model) + self._max_queue_depth
        if len(self._in_flight) >= capacity:
            raise QueueFull(len(self._in_flight), capacity)
        worker = min(ready, key=lambda w: w.num_in_flight)
        flight = InFlight(submit.request_id, worker)
        self._in_flight[submit.request_id] = flight
        self._finished.pop(submit.request_id, None)
        worker.num_in_flight += 1
        if self.observer is not None:
            submit = self.observer.routed(submit, worker)
        worker.send(submit)
        return flight

    def cancel(self, request_id: str) -> bool:
        """Tell the request's worker to stop it at its next step. False when it is not in flight."""
        flight = self._in_flight.get(request_id)
        if flight is None:
            return False
        if not flight.is_cancelling:
            flight.is_cancelling = True
            flight.worker.send(Cancel((request_id,)))
        return True

    def detach(self, request_id: str) -> None:
        """The caller needs no more events for this request (it finished early or went away)."""
        flight = self._in_flight.get(request_id)
        if flight is not None:
            flight.is_listening = False

    def is_in_flight(self, request_id: str) -> bool:
        flight = self._in_flight.get(request_id)
        return flight is not None and flight.is_listening and not flight.is_cancelling

    def was_finished(self, request_id: str) -> bool:
        return request_id in self._finished or request_id in self._in_flight

    # -- messages from workers (loop thread) --------------------------------------------------------------------

    def _on_message(self, worker: WorkerHandle, message: WorkerMessage) -> None:
        match message:
            case StepOutput(deltas=deltas):
                if self.observer is not None:
                    self.observer.stepped(worker, message)
                for delta in deltas:
                    self._deliver(delta.request_id, delta, is_last=delta.finish is not None)
            case RequestFailed(request_id=request_id):
                self._deliver(request_id, message, is_last=True)
            case LoadProgress(stage=stage, fraction=fraction):
                logger.info("worker %d: %s (%.0f%%)", worker.worker_id, stage, 100 * fraction)
            case Ready(model=model):
                worker.model = model
                worker.state = WorkerState.READY
                logger.info(
                    "worker %d ready: %s (%s, %s, quantization %s) on %s, context %d tokens",
                    worker.worker_id, model.model_id, model.architecture, model.dtype,
                    model.quantization, model.device, model.max_context_tokens,
                )  # fmt: skip
                self._notify()
            case WorkerFailed(message=text):
                logger.error("worker %d failed: %s", worker.worker_id, text)
                worker.state = WorkerState.FAILED
                self._notify()
            case _:
                logger.error("worker %d sent an unknown message %r", worker.worker_id, type(message))

    def _deliver(self, request_id: str, event: WorkerEvent, is_last: bool) -> None:
        flight = self._in_flight.get(request_id)
        if flight is None:
            return
        if flight.is_listening:
            flight.events.put_nowait(event)
        if is_last:
            self._forget(flight)

    def _forget(self, flight: InFlight) -> None:
        del self._in_flight[flight.request_id]
        flight.worker.num_in_flight -= 1
        self._finished[flight.request_id] = None
        if len(self._finished) > _FINISHED_MEMORY:
            self._finished.popitem(last=False)

    def _on_exit(self, worker: WorkerHandle) -> None:
        if self._is_stopping:
            worker.state = WorkerState.STOPPED
        elif worker.state in (WorkerState.STARTING, WorkerState.READY):
            logger.error("worker %d exited unexpectedly", worker.worker_id)
            worker.state = WorkerState.FAILED
        for flight in [f for f in self._in_flight.values() if f.worker is worker]:
            self._deliver(flight.request_id, WorkerCrashed(worker.worker_id), is_last=True)
        self._notify()

    def _notify(self) -> None:
        self._state_changed.set()
        for callback in self._listeners:
            callback()
