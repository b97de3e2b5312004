"""Work queued at one worker moves to another that becomes ready later, if it has not started; real processes.

The fault: worker 0 loads, but the gateway is kept from hearing its Ready until every stream has been sent (as
when streams arrive just after readiness turned SERVING on the first worker). Until then nothing is routed to it;
once it is ready, the requests worker 1 has queued but not started move to it, and every stream completes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autoglm.v1 import types_pb2
from autoglm_rpc.pool.pool import WorkerPool
from tests.support import ServerThread, server_settings, wait_for_info
from workers.protocol import Ready

NUM_STREAMS = 40
NUM_TOKENS = 160


@dataclass
class LateWorker:
    """A server whose worker 0 is ready for the gateway only once `release` passes on its held Ready."""

    server: ServerThread
    held: list[tuple] = field(default_factory=list)  # (pool, worker, Ready), once worker 0 has loaded

    def release(self) -> None:
        pool, worker, message = self.held[0]
        self.server.call(lambda: _ON_MESSAGE(pool, worker, message))


_ON_MESSAGE = WorkerPool._on_message


@pytest.fixture()
def late_worker(monkeypatch: pytest.MonkeyPatch, glm_checkpoint: Path) -> Iterator[LateWorker]:
    held: list[tuple] = []
    on_message = _ON_MESSAGE

    def holding_worker_0s_ready(pool: WorkerPool, worker, message) -> None:
        if isinstance(message, Ready) and worker.worker_id == 0 and not held:
            held.append((pool, worker, message))
            return
        on_message(pool, worker, message)

    monkeypatch.setattr(WorkerPool, "_on_message", holding_worker_0s_ready)
    settings = server_settings(glm_checkpoint, workers=2, max_batch_size=2, max_num_batched_tokens=64)
    server = ServerThread(settings).start()
    try:
        yield LateWorker(server, held)
    finally:
        server.stop()


def test_queued_work_moves_to_a_worker_that_becomes_ready(late_worker: LateWorker) -> None:
    server, held = late_worker.server, late_worker.held
    deadline = time.monotonic() + 120
    while not held and time.monotonic() < deadline:  # worker 0 has loaded; the gateway does not know yet
        time.sleep(0.05)
    assert held, "worker 0 never became ready"
    with server.client() as client, ThreadPoolExecutor(NUM_STREAMS) as executor:
        options = {"max_new_tokens": NUM_TOKENS, "stopping": {"ignore_eos": True}, "timeout": 120}
        streams = [
            executor.submit(lambda i=i: list(client.stream(f"stream {i}", **options))) for i in range(NUM_STREAMS)
        ]

        def all_sent(info) -> bool:
            return sum(w.in_flight_requests for w in info.workers) + sum(s.done() for s in streams) == NUM_STREAMS

        queued = wait_for_info(client, all_sent, 60)
        in_flight = [w.in_flight_requests for w in queued.workers]
        assert in_flight[0] == 0 and in_flight[1] >= NUM_STREAMS // 2, in_flight  # routed to the ready one only
        late_worker.release()  # worker 0's Ready reaches the pool now
        moved = wait_for_info(client, lambda i: i.workers[0].in_flight_requests > 0, 10)
        results = [stream.result(timeout=120) for stream in streams]
    assert all(r[-1].finish_reason == types_pb2.FINISH_REASON_MAX_NEW_TOKENS for r in results)
    assert all(r[-1].usage.completion_tokens == NUM_TOKENS for r in results)
    num_moved = server.call(lambda: server.app.pool.num_rerouted)
    # What worker 1 had started stays there; of the rest, about half (an even share) moved.
    assert NUM_STREAMS // 8 <= num_moved <= NUM_STREAMS // 2, (num_moved, in_flight)
    print(f"in flight [worker 0, worker 1]: {in_flight} before worker 0 was ready, "
          f"{[w.in_flight_requests for w in moved.workers]} after; {num_moved} moved")  # fmt: skip
