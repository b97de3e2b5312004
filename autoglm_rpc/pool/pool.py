"""The worker pool: starts and supervises the workers, admits and routes requests, fans worker output out.

Admission: a request is refused with QUEUE_FULL (and a RetryInfo) when the requests in flight reach the capacity,
which is the running batches of the ready workers (`max_batch_size` each) plus `max_queue_depth` waiting
requests; with SERVER_DRAINING once draining has begun; with NO_READY_WORKER while no worker is ready. Routing:
the ready worker with the fewest requests in flight. Each admitted request gets an `EventBuffer` (bounded, see
`buffer.py`) that receives its `RequestDelta`s, a `RequestFailed`, or a `ServiceError`. A request stays counted
against its worker until the worker reports it finished, even if its caller has gone, so the accounting stays true.

When a worker process dies (see `handle.py` for how that is seen at once) its requests end, on the spot, with
UNAVAILABLE / WORKER_CRASHED, except a request that has received no token from the dying worker yet: its caller
has seen at most the stream's first message (request id and prompt size, which a second worker reproduces
exactly, since the `Submit` carries the resolved seed), so it is sent, once, to the least-loaded other ready
worker. A request is retried at most once, and not when its caller has gone or cancelled it, or when the pool
is stopping. The dead worker is restarted by the `Supervisor` (backoff, crash-loop detection).

When a worker becomes ready, queued requests that other workers have not started yet move to it (see
`rebalance.py`): a request is routed to a ready worker when it arrives, and moved at most when a worker becomes
ready, before its engine admits it.

A ready worker that stops making progress is found by the `Watchdog` (`watchdog.py`): it turns HUNG, its requests
end with UNAVAILABLE / WORKER_HUNG (or are retried once, as after a crash), and it is killed; its exit then goes
the way of any death. A worker that fails while loading with an error a restart would repeat (`WorkerFailed.
will_repeat`: bad files, weights, shapes or settings) is not restarted; if no worker has been ready yet, that
failure is fatal (`fatal_error`): the model cannot be served, and the server ends instead of retrying.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from autoglm_rpc.core.config_sections import PoolSettings
from autoglm_rpc.core.errors import (
    DuplicateRequestId,
    NoReadyWorker,
    QueueFull,
    ServerDraining,
    ServiceError,
    WorkerCrashed,
    WorkerHung,
)
from autoglm_rpc.pool.buffer import EventBuffer, WorkerEvent
from autoglm_rpc.pool.handle import WorkerHandle, WorkerState
from autoglm_rpc.pool.rebalance import withdrawals
from autoglm_rpc.pool.supervisor import RestartPolicy, Supervisor
from autoglm_rpc.pool.watchdog import Watchdog
from workers.protocol import (
    Cancel,
    LoadProgress,
    ModelInfo,
    Pong,
    Ready,
    RequestDelta,
    RequestFailed,
    StepOutput,
    Submit,
    Withdraw,
    Withdrawn,
    WorkerConfig,
    WorkerFailed,
    WorkerMessage,
)

logger = logging.getLogger(__name__)

# How many finished request ids are remembered, so CancelGeneration can say ALREADY_FINISHED.
_FINISHED_MEMORY = 10_000
DEFAULT_STREAM_BUFFER = 64


class PoolObserver(Protocol):
    """Telemetry's view of the pool: `routed` may return the Submit with trace context to send instead."""

    def routed(self, submit: Submit, worker: WorkerHandle) -> Submit: ...

    def stepped(self, worker: WorkerHandle, output: StepOutput) -> None: ...

    def restarted(self, worker: WorkerHandle) -> None: ...


@dataclass(eq=False)
class InFlight:
    """A request routed to a worker and not yet reported finished by it."""

    submit: Submit
    worker: WorkerHandle
    events: EventBuffer = field(default_factory=lambda: EventBuffer(DEFAULT_STREAM_BUFFER))
    is_listening: bool = True  # False once the caller has its answer (or has gone): events are dropped
    is_cancelling: bool = False
    has_output: bool = False  # a token has arrived for it: a crash can no longer be hidden by a retry
    was_retried: bool = False

    @property
    def request_id(self) -> str:
        return self.submit.request_id


class WorkerPool:
    """Owns the worker processes. All methods run on the event loop thread."""

    def __init__(self, configs: list[WorkerConfig], settings: PoolSettings | None = None) -> None:
        """`settings`: the `pool` section (queue depth, restarts, watchdog, stream buffers), or its defaults."""
        if not configs:
            raise ValueError("workers: at least one worker is needed")
        settings = settings or PoolSettings()
        self._configs = configs
        self._max_queue_depth = settings.max_queue_depth
        self._stream_buffer = settings.stream_buffer_messages
        self._supervisor = Supervisor(RestartPolicy.from_settings(settings), self._restart)
        self._workers: list[WorkerHandle] = []
        self._in_flight: dict[str, InFlight] = {}
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._state_changed = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []
        self._is_draining = False
        self._is_stopping = False
        self._has_served = False  # a worker has been ready at least once
        hang_timeout = settings.worker_hang_timeout  # None: derived from each worker's steps; 0: off
        self.watchdog = Watchdog(hang_timeout, lambda: self._workers, self._on_hung) if hang_timeout != 0 else None
        self.fatal_error: str | None = None  # a load failure that every restart would repeat; nothing can serve
        self.observer: PoolObserver | None = None
        self.num_retried = 0  # requests moved to another worker after theirs died before any token
        self.num_rerouted = 0  # queued requests moved, not yet started, to a worker that became ready
        self.num_merged = 0  # deltas merged into a pending one because their stream was not being read

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for config in self._configs:
            worker = WorkerHandle(config, loop, self._on_message, self._on_exit)
            self._workers.append(worker)
            worker.start()
        if self.watchdog is not None:
            self.watchdog.start()

    async def wait_until_settled(self, timeout: float) -> None:
        """Wait until at least one worker is ready or none can become so (also after a `fatal_error`); raise
        TimeoutError past `timeout`."""
        coming = (WorkerState.STARTING, WorkerState.RESTARTING)
        async with asyncio.timeout(timeout):
            while not self.num_ready and not self.fatal_error and any(w.state in coming for w in self._workers):
                self._state_changed.clear()
                await self._state_changed.wait()

    def start_draining(self) -> None:
        """Refuse new requests with SERVER_DRAINING from now on; those in flight carry on. No more restarts."""
        self._is_draining = True
        self._supervisor.cancel()
        for worker in self._workers:
            if worker.state is WorkerState.RESTARTING:
                worker.state = WorkerState.STOPPED
        self._notify()

    def fail_all(self, error: ServiceError) -> int:
        """End every request in flight with `error` and cancel it in its worker; return how many there were."""
        flights = list(self._in_flight.values())
        for flight in flights:
            flight.worker.send(Cancel((flight.request_id,)))
            self._deliver(flight.request_id, error, is_last=True)
        return len(flights)

    async def stop(self, timeout: float = 10.0) -> None:
        """Shut every worker down (killing any that do not exit in time); requests still in flight fail."""
        self._is_stopping = True
        self._supervisor.cancel()
        if self.watchdog is not None:
            self.watchdog.stop()
        await asyncio.gather(*(w.stop(timeout) for w in self._workers))
        for worker in self._workers:
            worker.state = WorkerState.STOPPED

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the loop) whenever a worker becomes ready or goes away, or draining begins."""
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
    def is_draining(self) -> bool:
        return self._is_draining

    @property
    def is_serving(self) -> bool:
        """Readiness: a worker is ready and the pool is not draining."""
        return bool(self.num_ready) and not self._is_draining

    @property
    def model(self) -> ModelInfo | None:
        """The model facts reported by a ready worker (every worker serves the same model)."""
        return next((w.model for w in self._workers if w.is_ready), None)

    @property
    def workers(self) -> tuple[WorkerHandle, ...]:
        return tuple(self._workers)

    # -- requests -----------------------------------------------------------------------------------------------

    def check_admission(self) -> list[WorkerHandle]:
        """The ready workers, if a new request could be admitted now; else raise why not.

        Cheap, so the front end calls it before tokenizing: a flood past capacity costs no tokenizer work.
        """
        if self._is_draining or self._is_stopping:
            raise ServerDraining()
        ready = [w for w in self._workers if w.is_ready]
        if not ready:
            raise NoReadyWorker()
        # A worker's batch is the number of KV-cache slots it got, which can be under max_batch_size.
        capacity = sum(w.model.max_batch_size for w in ready if w.model) + self._max_queue_depth
        if len(self._in_flight) >= capacity:
            raise QueueFull(len(self._in_flight), capacity)
        return ready

    def submit(self, submit: Submit) -> InFlight:
        """Admit and route one request; raise ServerDraining, NoReadyWorker, QueueFull or DuplicateRequestId."""
        if submit.request_id in self._in_flight:
            raise DuplicateRequestId(submit.request_id)
        ready = self.check_admission()
        flight = InFlight(submit, self._least_loaded(ready), EventBuffer(self._stream_buffer))
        self._in_flight[submit.request_id] = flight
        self._finished.pop(submit.request_id, None)
        flight.worker.num_in_flight += 1
        if self.observer is not None:
            # Stored as sent, so a retry on another worker carries the same trace context.
            flight.submit = self.observer.routed(submit, flight.worker)
        flight.worker.send(flight.submit)
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

    @staticmethod
    def _least_loaded(workers: list[WorkerHandle]) -> WorkerHandle:
        return min(workers, key=lambda w: w.num_in_flight)

    # -- messages from workers (loop thread) --------------------------------------------------------------------

    def _on_message(self, worker: WorkerHandle, message: WorkerMessage) -> None:
        if worker.state is WorkerState.HUNG:
            return  # its requests have ended or moved; it is being killed
        if self.watchdog is not None:
            longest = message.longest_step if isinstance(message, StepOutput | Pong | Ready) else None
            self.watchdog.heard(worker, longest)
        match message:
            case StepOutput(deltas=deltas):
                worker.last_step = message
                if self.observer is not None:
                    self.observer.stepped(worker, message)
                for delta in deltas:
                    self._deliver(delta.request_id, delta, is_last=delta.finish is not None)
            case RequestFailed(request_id=request_id):
                self._deliver(request_id, message, is_last=True)
            case LoadProgress(stage=stage, fraction=fraction):
                logger.info("worker %d: %s (%.0f%%)", worker.worker_id, stage, 100 * fraction)
            case Pong():
                pass  # being heard from is all it says
            case Ready(model=model):
                worker.model = model
                worker.state = WorkerState.READY
                self._has_served = True
                logger.info(
                    "worker %d ready: %s (%s, %s, quantization %s) on %s, context %d tokens",
                    worker.worker_id, model.model_id, model.architecture, model.dtype,
                    model.quantization, model.device, model.max_context_tokens,
                )  # fmt: skip
                self._notify()
                self._rebalance(worker)
            case Withdrawn(request_ids=request_ids):
                self._reroute(worker, request_ids)
            case WorkerFailed(message=text, will_repeat=will_repeat):
                # The process exits right after this; its exit decides what happens next.
                logger.error("worker %d failed: %s", worker.worker_id, text)
                worker.failure = text
                worker.failure_will_repeat = will_repeat
                if will_repeat and not self._has_served:
                    self.fatal_error = f"worker {worker.worker_id} cannot load the model: {text}"
                    self._notify()
            case _:
                logger.error("worker %d sent an unknown message %r", worker.worker_id, type(message))

    def _deliver(self, request_id: str, event: WorkerEvent, is_last: bool) -> None:
        flight = self._in_flight.get(request_id)
        if flight is None:
            return
        if isinstance(event, RequestDelta) and event.token_ids:
            flight.has_output = True
        if flight.is_listening:
            flight.events.put(event)
        if is_last:
            self._forget(flight)

    def _forget(self, flight: InFlight) -> None:
        del self._in_flight[flight.request_id]
        flight.worker.num_in_flight -= 1
        self.num_merged += flight.events.num_merged
        self._finished[flight.request_id] = None
        if len(self._finished) > _FINISHED_MEMORY:
            self._finished.popitem(last=False)

    # -- supervision --------------------------------------------------------------------------------------------

    def _on_exit(self, worker: WorkerHandle) -> None:
        if self._is_stopping:
            worker.state = WorkerState.STOPPED
        elif self._is_draining:  # the server is going away: a restart would only be shut down again
            worker.state = WorkerState.STOPPED
            logger.error("worker %d died while the server drains: %s", worker.worker_id, worker.last_exit)
        elif worker.failure_will_repeat:
            worker.state = WorkerState.CRASH_LOOP
            logger.error(
                "worker %d is not restarted: loading would fail again (%s)", worker.worker_id, worker.failure
            )
        else:
            logger.error("worker %d died: %s", worker.worker_id, worker.last_exit)
            self._supervisor.worker_died(worker)  # RESTARTING or CRASH_LOOP: no longer routed to
        for flight in [f for f in self._in_flight.values() if f.worker is worker]:
            if not self._retry(flight):
                error = ServerDraining() if self._is_stopping else WorkerCrashed(worker.worker_id)
                self._deliver(flight.request_id, error, is_last=True)
        self._notify()

    def _on_hung(self, worker: WorkerHandle) -> None:
        """The watchdog found `worker` silent: end or move its requests, then kill it (its exit restarts it)."""
        timeout = self.watchdog.timeout_for(worker) if self.watchdog is not None else 0.0
        flights = [f for f in self._in_flight.values() if f.worker is worker]
        logger.error(
            "worker %d is hung: no engine step and no answer to a liveness ping for %.0fs; killing it "
            "(%d request(s) in flight end with WORKER_HUNG or move to another worker)",
            worker.worker_id, timeout, len(flights),
        )  # fmt: skip
        worker.state = WorkerState.HUNG
        worker.num_hangs += 1
        worker.failure = f"hung: no progress for {timeout:g}s"
        for flight in flights:
            if not self._retry(flight):
                self._deliver(flight.request_id, WorkerHung(worker.worker_id, timeout), is_last=True)
        worker.kill()
        self._notify()

    def _retry(self, flight: InFlight) -> bool:
        """Move a request that got no token from its dead worker to another ready worker, once."""
        if flight.has_output or flight.was_retried or not flight.is_listening or flight.is_cancelling:
            return False
        ready = [w for w in self._workers if w.is_ready]
        if self._is_stopping or not ready:
            return False
        dead = flight.worker
        flight.was_retried = True
        self._move(flight, self._least_loaded(ready))
        self.num_retried += 1
        logger.warning(
            "request %s: worker %d died before its first token; retrying it on worker %d",
            flight.request_id, dead.worker_id, flight.worker.worker_id,
        )  # fmt: skip
        return True

    def _rebalance(self, new: WorkerHandle) -> None:
        """`new` just became ready: ask the others to give back the queued work above an even share."""
        if self._is_draining or self._is_stopping:
            return
        for worker, count in withdrawals([w for w in self._workers if w.is_ready], new):
            worker.send(Withdraw(count))

    def _reroute(self, worker: WorkerHandle, request_ids: tuple[str, ...]) -> None:
        """Route what `worker` gave back unstarted (`Withdrawn`) as new arrivals, to the least-loaded ready worker
        (possibly `worker` again); a cancelled request goes too, with its Cancel, and ends there CANCELLED."""
        ready = [w for w in self._workers if w.is_ready]
        moved = 0
        for request_id in request_ids:
            flight = self._in_flight.get(request_id)
            if flight is None or flight.worker is not worker:
                continue
            if not flight.is_listening or self._is_stopping or not ready:
                # Nobody waits for it any more, or it has nowhere to go: it ends here, never started.
                error = ServerDraining() if self._is_stopping else NoReadyWorker("no worker is ready to take it")
                self._deliver(request_id, error, is_last=True)
                continue
            self._move(flight, self._least_loaded(ready))
            if flight.is_cancelling:
                flight.worker.send(Cancel((request_id,)))
            moved += flight.worker is not worker
        self.num_rerouted += moved
        if moved:
            logger.info("moved %d queued request(s) from worker %d to a worker that became ready", moved,
                        worker.worker_id)  # fmt: skip

    def _move(self, flight: InFlight, target: WorkerHandle) -> None:
        """Send `flight` to `target`, counted there from now on (its old worker has forgotten it, or died)."""
        flight.worker.num_in_flight -= 1
        flight.worker = target
        target.num_in_flight += 1
        target.send(flight.submit)

    def _restart(self, worker: WorkerHandle) -> None:
        if self.observer is not None:
            self.observer.restarted(worker)
        try:
            worker.start()
        except OSError as exc:  # out of file descriptors or processes: count it as one more crash
            worker.last_exit = f"could not start a process: {exc}"
            self._supervisor.worker_died(worker)
            self._notify()

    def _notify(self) -> None:
        self._state_changed.set()
        for callback in self._listeners:
            callback()
