"""Faults injected for real: a worker that segfaults before its first token (the request is retried on the other
worker and succeeds), a worker that runs out of memory at every load (a crash loop, reported and not spun, while
the other worker serves), and a checkpoint no worker can load (the server gives up and exits 1)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from autoglm.v1 import model_pb2
from autoglm_rpc.client import Client
from tests.support import ServerThread, server_settings

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(client: Client, condition: Callable[[model_pb2.GetServerInfoResponse], bool], timeout: float):
    """Poll GetServerInfo (a test's view from outside) until `condition` holds; return that answer."""
    deadline = time.monotonic() + timeout
    while True:
        info = client.server_info(timeout=10)
        if condition(info):
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last answer:\n{info}")
        time.sleep(0.1)


def test_segfault_before_the_first_token_is_retried_on_another_worker(
    glm_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOGLM_TEST_FAULT", "segfault-on-submit@0")
    settings = server_settings(glm_checkpoint, workers=2, restart_backoff_initial=0.5)
    server = ServerThread(settings).start()
    try:
        with server.client() as client:
            client.wait_until_ready(60)
            _wait_for(client, lambda i: all(w.state == model_pb2.WORKER_STATE_READY for w in i.workers), 60)
            # Both idle: the request goes to worker 0, which dies on receiving it; worker 1 serves it.
            result = client.generate("Hello", max_new_tokens=5, return_token_ids=True, timeout=60)
            assert len(result.sequences[0].token_ids) == 5
            assert server.call(lambda: server.app.pool.num_retried) == 1
            info = _wait_for(client, lambda i: i.workers[0].restarts == 1, 60)
            assert info.workers[0].last_exit == "killed by signal SIGSEGV"
            assert info.workers[1].state == model_pb2.WORKER_STATE_READY
    finally:
        server.stop()


def test_a_worker_that_cannot_load_is_a_crash_loop_while_the_other_serves(
    glm_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOGLM_TEST_FAULT", "oom-at-load@1")
    settings = server_settings(
        glm_checkpoint, workers=2, restart_backoff_initial=0.1, max_restarts_per_window=1, restart_window=600.0
    )
    server = ServerThread(settings).start()
    try:
        with server.client() as client:
            crash_loop = model_pb2.WORKER_STATE_CRASH_LOOP
            info = _wait_for(client, lambda i: i.workers[1].state == crash_loop, 90)
            broken = info.workers[1]
            assert (broken.restarts, broken.pid) == (1, 0)  # restarted once, then left down
            assert broken.last_exit.startswith("exit code 1 (MemoryError")
            assert info.workers[0].state == model_pb2.WORKER_STATE_READY
            assert info.ready_workers == 1
            client.wait_until_ready(10)  # readiness stays SERVING on the healthy worker
            assert client.generate("Hello", max_new_tokens=3, timeout=30).usage.completion_tokens == 3
            time.sleep(0.5)  # several backoffs' worth: nothing restarts a worker in a crash loop
            assert client.server_info().workers[1].restarts == 1
    finally:
        server.stop()


def test_a_checkpoint_no_worker_can_load_ends_the_server(glm_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in glm_checkpoint.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    flags = ["--model", str(broken), "--port", "0", "--device", "cpu", "--workers", "1", "--worker-threads", "1"]
    flags += ["--max-restarts-per-window", "0", "--no-http"]  # no restart: the first failed load is the end
    result = subprocess.run(
        [sys.executable, "-m", "autoglm_rpc.cli", "serve", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "crash loop" in result.stderr
    assert "no worker could load the model" in result.stderr
