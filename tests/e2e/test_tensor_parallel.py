"""End to end with tensor parallelism: a real server with `--workers 2 --tensor-parallel-size 2`, i.e. one replica
of a tiny GLM split across two CPU ranks over gloo on 127.0.0.1.

Greedy tokens equal transformers' `generate()`, sampled tokens with a seed equal the whole-model server's,
GetServerInfo lists both ranks with their weights, and a rank that is killed or stopped takes its replica down
(requests end UNAVAILABLE / WORKER_CRASHED) and the replica comes back whole. Runs in file order: the faults
come last.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from autoglm.v1 import model_pb2
from autoglm_rpc.client import AutoglmError
from tests.e2e.test_generation import PROMPTS, hf_greedy
from tests.support import ServerThread, server_settings

CLI = [sys.executable, "-m", "autoglm_rpc.startup.cli"]
SPLIT_THREE_WAYS = ["--workers", "3", "--tensor-parallel-size", "3"]  # the tiny GLM has 4 heads
COLLECTIVE_TIMEOUT = 10.0  # seconds: how long a stopped rank can hold its replica


@pytest.fixture(scope="module")
def tp_server(glm_checkpoint: Path) -> Iterator[ServerThread]:
    settings = server_settings(
        glm_checkpoint,
        model_id="tiny-glm",
        workers=2,
        tensor_parallel_size=2,
        collective_timeout=COLLECTIVE_TIMEOUT,
        restart_backoff_initial=0.2,
        metrics_port=0,
    )
    server = ServerThread(settings).start()
    yield server
    pids = _rank_pids(server)
    server.stop()
    _assert_gone(pids)


def test_concurrent_greedy_requests_equal_generate(tp_server: ServerThread, glm_checkpoint: Path) -> None:
    lengths = [24, 7, 31, 16]
    with tp_server.client() as client, ThreadPoolExecutor(len(lengths)) as pool:
        futures = [
            pool.submit(
                client.generate, prompt, max_new_tokens=n, temperature=0.0, return_token_ids=True, timeout=120
            )
            for prompt, n in zip(PROMPTS, lengths, strict=False)
        ]
        for prompt, n, future in zip(PROMPTS, lengths, futures, strict=False):
            prompt_ids = list(client.tokenize(prompt).token_ids)
            assert list(future.result().sequences[0].token_ids) == hf_greedy(glm_checkpoint, prompt_ids, n), prompt


def test_llama_split_two_ways_equals_generate(llama_checkpoint: Path) -> None:
    settings = server_settings(llama_checkpoint, model_id="tiny-llama", workers=2, tensor_parallel_size=2)
    server = ServerThread(settings).start()
    try:
        pids = _rank_pids(server)
        cases = ((PROMPTS[2], 18), (PROMPTS[4], 9))
        with server.client() as client, ThreadPoolExecutor(len(cases)) as pool:
            futures = [
                pool.submit(client.generate, prompt, max_new_tokens=n, temperature=0.0, return_token_ids=True)
                for prompt, n in cases
            ]
            for (prompt, n), future in zip(cases, futures, strict=True):
                prompt_ids = list(client.tokenize(prompt).token_ids)
                expected = hf_greedy(llama_checkpoint, prompt_ids, n)
                assert list(future.result(timeout=120).sequences[0].token_ids) == expected, prompt
    finally:
        server.stop()
    _assert_gone(pids)


def test_sampled_tokens_with_a_seed_equal_the_whole_model(
    tp_server: ServerThread, glm_server: ServerThread
) -> None:
    options = {"max_new_tokens": 20, "temperature": 0.9, "top_p": 0.95, "seed": 1234, "return_token_ids": True}
    results = []
    for server in (tp_server, glm_server):
        with server.client() as client:
            results.append(list(client.generate(PROMPTS[1], timeout=60, **options).sequences[0].token_ids))
    assert results[0] == results[1]
    assert len(results[0]) == 20


def test_server_info_lists_every_rank(tp_server: ServerThread, glm_checkpoint: Path) -> None:
    from transformers import AutoModelForCausalLM

    with tp_server.client() as client:
        info = client.server_info()
    assert (info.tensor_parallel_size, info.total_workers) == (2, 1)
    (replica,) = info.workers
    assert replica.tensor_parallel_size == 2
    assert [rank.rank for rank in replica.ranks] == [0, 1]
    assert replica.ranks[0].pid == replica.pid != replica.ranks[1].pid
    assert all(rank.state == model_pb2.WORKER_STATE_READY and rank.device == "cpu" for rank in replica.ranks)
    model = AutoModelForCausalLM.from_pretrained(glm_checkpoint)
    split_bytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if "_proj." in name)
    for rank in replica.ranks:
        assert rank.sharded_weight_bytes == split_bytes // 2  # each rank holds half of the split layers
        assert rank.weight_bytes > rank.sharded_weight_bytes
    port = tp_server.app.telemetry.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for rank in replica.ranks:
        labels = f'model="tiny-glm",rank="{rank.rank}",worker="0"'
        assert f"autoglm_rank_weight_bytes{{{labels}}} {float(rank.weight_bytes)}" in text


def test_a_killed_rank_takes_its_replica_down_and_it_restarts(tp_server: ServerThread) -> None:
    old = _rank_pids(tp_server)
    with tp_server.client() as client:
        stream = client.stream("Hello", max_new_tokens=480, stopping={"ignore_eos": True}, timeout=120)
        next(stream)  # admitted
        next(stream)  # a token has streamed: the request cannot be retried elsewhere
        killed_at = time.monotonic()
        os.kill(old[1], signal.SIGKILL)
        with pytest.raises(AutoglmError) as caught:
            list(stream)
        assert time.monotonic() - killed_at < 1.0
        assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.UNAVAILABLE, "WORKER_CRASHED")
    _assert_gone(old)
    _wait_ready(tp_server, replaced=old)
    with tp_server.client() as client:
        assert client.generate("Hello", max_new_tokens=3, timeout=60).usage.completion_tokens == 3


def test_a_killed_rank_0_leaves_no_rank_behind(tp_server: ServerThread) -> None:
    old = _wait_ready(tp_server)
    os.kill(old[0], signal.SIGKILL)
    _assert_gone(old)  # rank 1 dies with rank 0 (its pipe closes; the kernel sends it SIGKILL)
    assert _wait_ready(tp_server, replaced=old)


def test_a_stopped_rank_times_out_its_replica(tp_server: ServerThread) -> None:
    old = _wait_ready(tp_server)
    error, waited = _stop_rank_1_mid_stream(tp_server, old)
    assert waited < COLLECTIVE_TIMEOUT + 30
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "WORKER_CRASHED")
    _assert_gone(old)
    assert _wait_ready(tp_server, replaced=old)


def test_a_rank_stopped_while_idle_misses_its_heartbeats(tp_server: ServerThread) -> None:
    old = _wait_ready(tp_server)
    os.kill(old[1], signal.SIGSTOP)  # no request runs: only the heartbeat can tell
    try:
        _assert_gone(old, timeout=COLLECTIVE_TIMEOUT + 30)
    finally:
        _signal(old[1], signal.SIGCONT)
    assert _wait_ready(tp_server, replaced=old)


def test_the_watchdog_ends_a_replica_whose_rank_hangs_mid_step(glm_checkpoint: Path) -> None:
    """The watchdog pings rank 0 only; a step stuck in an all-reduce with a stopped rank 1 answers no ping, so
    with a hang timeout shorter than the collective timeout the watchdog kills rank 0, and rank 1 dies with it."""
    settings = server_settings(
        glm_checkpoint, model_id="tiny-glm", workers=2, tensor_parallel_size=2, collective_timeout=600.0,
        worker_hang_timeout=4.0, restart_backoff_initial=0.2,
    )  # fmt: skip
    server = ServerThread(settings).start()
    try:
        old = _wait_ready(server)
        error, waited = _stop_rank_1_mid_stream(server, old)
        assert waited < 300  # the collective timeout (600 s) did not end it
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "WORKER_HUNG")
        _assert_gone(old)
        _wait_ready(server, replaced=old)
        with server.client() as client:
            assert client.server_info().workers[0].hangs == 1
            assert client.generate("Hello", max_new_tokens=3, timeout=60).usage.completion_tokens == 3
    finally:
        pids = _rank_pids(server)
        server.stop()
        _assert_gone(pids)


def test_a_split_the_model_cannot_take_ends_the_server(glm_checkpoint: Path) -> None:
    result = subprocess.run(
        [*CLI, "serve", "--model", str(glm_checkpoint), "--device", "cpu", "--port", "0", *SPLIT_THREE_WAYS],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "--tensor-parallel-size 3: the model's num_attention_heads is 4" in result.stderr


def _stop_rank_1_mid_stream(server: ServerThread, pids: list[int]) -> tuple[AutoglmError, float]:
    """SIGSTOP rank 1 once a stream has a token; the error that ends the stream and the seconds it took."""
    with server.client() as client:
        stream = client.stream("Hello", max_new_tokens=480, stopping={"ignore_eos": True}, timeout=300)
        next(stream)  # admitted
        next(stream)  # a token has streamed
        stopped_at = time.monotonic()
        os.kill(pids[1], signal.SIGSTOP)
        try:
            with pytest.raises(AutoglmError) as caught:
                list(stream)
        finally:
            _signal(pids[1], signal.SIGCONT)  # lets a rank that is somehow still there see its SIGKILL
    return caught.value, time.monotonic() - stopped_at


def _rank_pids(server: ServerThread) -> list[int]:
    with server.client() as client:
        (replica,) = client.server_info().workers
    return [rank.pid for rank in replica.ranks]


def _wait_ready(
    server: ServerThread, replaced: tuple[int, ...] | list[int] = (), timeout: float = 180.0
) -> list[int]:
    """The ranks' pids once the replica is ready, and (given `replaced`) once it is a new one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _rank_pids(server)
        if all(pids) and not set(pids) & set(replaced):
            return pids
        time.sleep(0.2)
    raise AssertionError("the replica did not come back")


def _assert_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _signal(pid, 0):
            assert time.monotonic() < deadline, f"rank process {pid} is still running"
            time.sleep(0.05)


def _signal(pid: int, signum: int) -> bool:
    """Send `signum` to `pid`; False when there is no such process (or only a zombie left to reap)."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
