"""Moving queued work to a worker that has just become ready.

Requests are routed to the least-loaded ready worker when they arrive, so while one worker is still loading every
request goes to the others, and their queues (up to `max_queue_depth` beyond the running batches) fill. Without
a move, the worker that becomes ready later stays idle while those queues drain one batch at a time. So when a
worker becomes ready, each other ready worker holding more than its batch and more than an even share of the work
is sent a `Withdraw` for the excess. A worker gives back only requests its engine has not started (waiting,
never admitted), lowest priority and newest first; a request it has started stays where its tokens are. The
pool routes what comes back (`Withdrawn`) as a new arrival: to the least-loaded ready worker.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoglm_rpc.pool.handle import WorkerHandle


def withdrawals(ready: Sequence[WorkerHandle], new: WorkerHandle) -> list[tuple[WorkerHandle, int]]:
    """How many requests to ask of each ready worker but `new`, so that the work evens out over `ready`.

    Only a worker with requests in flight beyond its batch has any waiting; it is asked for what it holds above
    an even share (rounded up), and gives back what of that has not started.
    """
    if not ready:
        return []
    total = sum(worker.num_in_flight for worker in ready)
    share = -(-total // len(ready))
    asks = []
    for worker in ready:
        batch = worker.model.max_batch_size if worker.model is not None else 0
        if worker is not new and worker.num_in_flight > max(share, batch):
            asks.append((worker, worker.num_in_flight - share))
    return asks
