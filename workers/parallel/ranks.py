"""Rank 0's side of its replica's other ranks: starts them, sends them each forward, watches and stops them;
`load_replica` is how rank 0 loads a replica with them.

The gateway starts rank 0 only (it owns the pipe to the gateway); rank 0 starts ranks 1..N-1 as `spawn`
children with a pipe each. Over that pipe rank 0 sends every forward (`DecoderCall`), and a rank sends back its
`RankInfo` once loaded (or `RankFailed`). No rank outlives rank 0: a rank exits when its pipe closes, and the
kernel kills it when rank 0 dies (PR_SET_PDEATHSIG). No rank 0 outlives a rank either: once the replica is up,
a thread waits on the ranks' process sentinels and heartbeats: the death of one ends rank 0 at once (exit code 1),
so the gateway fails the replica's requests and restarts the group, and so does a rank silent for
`collective_timeout` seconds (stopped, or hung while idle). A rank that hangs mid-step is caught sooner or
later by the collective timeout of the all-reduce it does not join.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.util
import os
import threading
import time
from multiprocessing.connection import Connection, wait

from workers.engine.runner import DecoderCall
from workers.model.loader import LoadedModel, ProgressCallback, check_checkpoint_files, model_info
from workers.parallel.group import (
    HEARTBEAT_INTERVAL,
    LOAD_TIMEOUT,
    RankFailed,
    join_group,
    leave_group,
    open_store,
)
from workers.parallel.replica import build_rank, rank_device
from workers.protocol import RankInfo, WorkerConfig

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 5.0  # seconds a rank gets to leave after being told to, before it is killed
EXIT_RANK_DIED = 1


class RankProcesses:
    """Ranks 1..N-1 of one replica, as seen from rank 0."""

    def __init__(self, config: WorkerConfig, store_port: int) -> None:
        from workers.parallel.follower import main

        context = multiprocessing.get_context("spawn")
        # The gateway starts rank 0 as a daemonic process (it must not outlive the gateway), and multiprocessing
        # refuses children to those; rank 0 stops its ranks itself, and the kernel kills them if it dies.
        multiprocessing.current_process().daemon = False
        self._stopping = False
        self._silence_limit = config.collective_timeout
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.conns: list[Connection] = []
        for rank in range(1, config.tensor_parallel_size):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=main, args=(child_end, config, rank, store_port), name=f"rank-{rank}", daemon=True
            )
            process.start()
            child_end.close()
            self.processes.append(process)
            self.conns.append(parent_end)
        # At exit, before multiprocessing joins the children (forever, for a stopped one): a finalizer with an
        # exit priority runs first, in a spawned rank 0 and in a plain process alike.
        multiprocessing.util.Finalize(self, self.stop, exitpriority=10)

    def wait_ready(self, timeout: float) -> list[RankInfo]:
        """Each rank's RankInfo once it has loaded; RuntimeError when one fails, dies or takes over `timeout`."""
        infos = []
        for rank, (conn, process) in enumerate(zip(self.conns, self.processes, strict=True), start=1):
            if not conn.poll(timeout):
                raise RuntimeError(f"rank {rank} did not load within {timeout:.0f}s")
            try:
                message = conn.recv()
            except EOFError:
                raise RuntimeError(f"rank {rank} exited while loading (exit code {process.exitcode})") from None
            if isinstance(message, RankFailed):
                raise RuntimeError(f"rank {rank} failed to load: {message.message}")
            infos.append(message)
        return infos

    def send(self, call: DecoderCall) -> None:
        """Give every rank the forward rank 0 is about to run (the `ModelRunner`'s mirror)."""
        for rank, conn in enumerate(self.conns, start=1):
            try:
                conn.send(call)
            except OSError as exc:
                raise RuntimeError(f"rank {rank} is gone: {exc}") from exc

    def watch(self) -> None:
        """From now on, the death of any rank ends this process (see the module docstring)."""
        threading.Thread(target=self._watch, name="rank-watcher", daemon=True).start()

    __call__ = send  # the runner's mirror

    def stop(self) -> None:
        """Tell every rank to leave, kill those still there after STOP_TIMEOUT, leave the group; idempotent."""
        if self._stopping:
            return
        self._stopping = True
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for process in self.processes:
            process.join(STOP_TIMEOUT)
            if process.is_alive():
                logger.warning("rank %s did not stop within %.0fs; killing it", process.name, STOP_TIMEOUT)
                process.kill()
                process.join(STOP_TIMEOUT)
        leave_group()

    def _watch(self) -> None:
        """End this process when a rank exits, or sends no heartbeat for `_silence_limit` seconds (stopped or
        hung while the replica is idle, when no all-reduce would notice)."""
        sentinels = {process.sentinel: process for process in self.processes}
        heard = {conn: time.monotonic() for conn in self.conns}
        while not self._stopping:
            ready = wait([*sentinels, *heard], timeout=HEARTBEAT_INTERVAL)
            if self._stopping:
                return
            for item in ready:
                if item in sentinels:
                    process = sentinels[item]
                    self._end_replica(f"{process.name} exited (exit code {process.exitcode})")
                try:
                    item.recv()  # a heartbeat
                    heard[item] = time.monotonic()
                except (EOFError, OSError):
                    heard.pop(item)  # the rank is exiting; its sentinel follows
            silent = [
                self.conns.index(c) + 1 for c, t in heard.items() if time.monotonic() - t > self._silence_limit
            ]
            if silent and not self._stopping:
                self._end_replica(f"rank {silent[0]} sent no heartbeat for {self._silence_limit:.0f}s")

    def _end_replica(self, reason: str) -> None:
        logger.error("%s; the replica stops", reason)
        for process in self.processes:
            if process.is_alive():
                process.kill()
        os._exit(EXIT_RANK_DIED)


def load_replica(config: WorkerConfig, on_progress: ProgressCallback) -> LoadedModel:
    """Rank 0: start the other ranks, load this rank's shard with them, and return the model for the engine,
    whose runner sends every forward to the other ranks. Raises when any rank fails to load."""
    device = rank_device(config, 0)
    check_checkpoint_files(config, on_progress)
    store = open_store(config.tensor_parallel_size)
    ranks = RankProcesses(config, store.port)
    try:
        size, timeout = config.tensor_parallel_size, config.collective_timeout
        group = join_group(store.port, 0, size, device, timeout=timeout, store=store)
        on_progress("loading weight shards", 0.0)
        rank = build_rank(config, 0, device, group)
        others = ranks.wait_ready(LOAD_TIMEOUT)
    except BaseException:
        ranks.stop()
        raise
    ranks.watch()
    info = model_info(config, rank.model, rank.cache.spec, rank.max_seq_len, ranks=(rank.info, *others))
    on_progress("model loaded", 0.9)
    return LoadedModel(model=rank.model, cache=rank.cache, info=info, mirror=ranks)
