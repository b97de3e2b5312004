"""Ranks 1..N-1 of a tensor-parallel replica: the `spawn` target rank 0 starts, one process per rank.

A rank loads its shard with the others, reports its `RankInfo`, then runs every forward rank 0 sends, in
order, until rank 0 sends None or its pipe closes. It never schedules, samples or talks to the gateway: the
hidden states it computes are only its share of the all-reduces, and rank 0 alone turns them into tokens.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection

from workers.protocol import WorkerConfig
from workers.signals import ignore_stop_signals
from workers.telemetry.logs import configure_logging

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def main(conn: Connection, config: WorkerConfig, rank: int, store_port: int) -> None:
    """Run rank `rank` until told to stop (exit 0) or until it fails (exit 1, after sending `RankFailed`)."""
    parent = os.getppid()
    _die_with_parent(parent)
    ignore_stop_signals()  # rank 0 decides when ranks stop; a group-wide SIGTERM must not break the replica
    configure_logging(config, f"worker-{config.worker_id}-rank-{rank}")
    import torch

    from workers.parallel.group import RankFailed, join_group, leave_group
    from workers.parallel.replica import build_rank, rank_device

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    exit_code = 0
    sending = threading.Lock()  # the heartbeat thread and this one share the pipe's sending end
    try:
        device = rank_device(config, rank)
        group = join_group(
            store_port, rank, config.tensor_parallel_size, device, timeout=config.collective_timeout
        )
        built = build_rank(config, rank, device, group)
        conn.send(built.info)
        threading.Thread(target=_beat, args=(conn, sending), name="heartbeat", daemon=True).start()
        _serve(conn, built, config, device)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        logger.info("rank 0 is gone; rank %d stops", rank)
    except Exception as exc:
        logger.exception("rank %d failed", rank)
        with contextlib.suppress(OSError), sending:
            conn.send(RankFailed(rank, f"{type(exc).__name__}: {exc}"))
        exit_code = 1
    finally:
        leave_group()
    sys.exit(exit_code)


def _serve(conn: Connection, built, config: WorkerConfig, device) -> None:
    import torch

    from workers.engine.runner import ModelRunner
    from workers.engine.static_decode import resolve_decode_mode

    # The same rows and context limit as rank 0's runner, so a static decode picks the same bucket.
    decode_mode = resolve_decode_mode(config.decode_mode, device)
    runner = ModelRunner(built.model, built.cache, config.max_batch_size, built.max_seq_len, decode_mode)
    with torch.inference_mode():
        while (call := conn.recv()) is not None:
            match call.kind:
                case "decode":
                    runner.run_decode(call, call.decode_inputs(device))
                case "prefill":
                    runner.run_prefill(call)
                case "capture":
                    runner.capture_graphs()


def _beat(conn: Connection, sending: threading.Lock) -> None:
    """Tell rank 0 every HEARTBEAT_INTERVAL that this process still runs (see `RankProcesses._watch`)."""
    from workers.parallel.group import HEARTBEAT_INTERVAL

    with contextlib.suppress(OSError):
        while True:
            time.sleep(HEARTBEAT_INTERVAL)
            with sending:
                conn.send(True)


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this rank when rank 0 dies (Linux); a rank must never outlive its replica."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        return
    if os.getppid() != parent:  # rank 0 died before the request took effect
        os._exit(1)
