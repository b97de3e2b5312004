"""The process group of one replica's ranks: a TCP rendezvous on the loopback, collectives with a timeout.

Rank 0 opens a `TCPStore` on port 0 (the kernel picks a free port, so there is no race for it) and hands the
port to the ranks it starts; they join it as clients. The backend is NCCL when the ranks run on CUDA, gloo on
the CPU. Two groups over the same ranks: the default one, with a long timeout, for the rendezvous and the
agreements made while loading (ranks load at different speeds); and the one the forward's all-reduces run in,
with `collective_timeout`: a rank that dies makes the others fail at once (the peer's socket closes), and a
rank that hangs makes them fail after the timeout, so one broken rank can never hold its replica forever. On
several hosts the same rendezvous would use rank 0's address instead of the loopback.
Here too is what rank 0 and the other ranks share over their pipes (`RankFailed`, `HEARTBEAT_INTERVAL`).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

RENDEZVOUS_HOST = "127.0.0.1"
# Seconds the ranks may take to meet and to load (the gateway's worker_start_timeout bounds the whole start).
LOAD_TIMEOUT = 600.0
HEARTBEAT_INTERVAL = 1.0  # seconds between a rank's heartbeats to rank 0


@dataclass(frozen=True, slots=True)
class RankFailed:
    """A rank could not load or start; rank 0 fails with this message (sent over the rank's pipe)."""

    rank: int
    message: str


def open_store(size: int) -> dist.TCPStore:
    """Rank 0's rendezvous store on a free loopback port (`store.port`)."""
    wait = datetime.timedelta(seconds=LOAD_TIMEOUT)
    return dist.TCPStore(RENDEZVOUS_HOST, 0, size, is_master=True, timeout=wait, wait_for_workers=False)


def join_group(
    store_port: int, rank: int, size: int, device: torch.device, *, timeout: float, store=None
) -> dist.ProcessGroup:
    """Join the replica's process groups as `rank` of `size` (rank 0 passes the store it opened); returns the
    group for the forward's all-reduces, whose collectives give up after `timeout` seconds."""
    wait = datetime.timedelta(seconds=LOAD_TIMEOUT)
    if store is None:
        store = dist.TCPStore(RENDEZVOUS_HOST, store_port, size, is_master=False, timeout=wait)
    backend = "nccl" if device.type == "cuda" else "gloo"
    options = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=wait, **options)
    group = dist.new_group(list(range(size)), timeout=datetime.timedelta(seconds=timeout), backend=backend)
    logger.info("rank %d of %d joined the %s group on port %d", rank, size, backend, store_port)
    return group


def all_reduce(tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Sum `tensor` over the ranks of `group`, in place; returns it."""
    dist.all_reduce(tensor, group=group)
    return tensor


def agree_on_min(value: int, device: torch.device) -> int:
    """The smallest `value` over the ranks (e.g. KV cache blocks: every rank must hold the same number)."""
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def leave_group() -> None:
    """Destroy the process group if there is one (at exit; errors then do not matter)."""
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as exc:  # a peer already gone: nothing left to release cleanly
            logger.debug("destroying the process group failed: %s", exc)
