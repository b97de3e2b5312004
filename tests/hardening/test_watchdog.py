"""The watchdog, with SIGSTOP on a real worker: a stopped worker is found, its requests end UNAVAILABLE /
WORKER_HUNG (over HTTP too), it is killed and restarted, and GetServerInfo shows what happened; then it serves
again."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autoglm.v1 import model_pb2
from autoglm_rpc.client import AutoglmError, Client
from autoglm_rpc.pool.watchdog import HANG_FLOOR, HANG_STEP_MULTIPLE
from tests.support import ServerThread, server_settings, wait_for_info

HANG_TIMEOUT = 4.0


@pytest.fixture(scope="module")
def watched(glm_checkpoint: Path) -> Iterator[ServerThread]:
    settings = server_settings(
        glm_checkpoint, workers=1, worker_hang_timeout=HANG_TIMEOUT, restart_backoff_initial=0.1
    )
    server = ServerThread(settings).start()
    yield server
    server.stop()


def _ready_again(client: Client, old_pid: int) -> model_pb2.WorkerInfo:
    ready = model_pb2.WORKER_STATE_READY
    info = wait_for_info(client, lambda i: i.workers[0].state == ready and i.workers[0].pid != old_pid, 120)
    return info.workers[0]


def test_a_stopped_worker_mid_stream_ends_the_stream_worker_hung_and_restarts(watched: ServerThread) -> None:
    with watched.client() as client:
        info = client.server_info(timeout=10)
        assert info.worker_hang_timeout_seconds == HANG_TIMEOUT
        pid = info.workers[0].pid
        received, stopped = [], False
        with pytest.raises(AutoglmError) as failure:
            stream = client.stream(
                "Hello", max_new_tokens=500, stopping={"ignore_eos": True}, return_token_ids=True, timeout=120
            )
            for message in stream:
                received.append(message)
                if message.token_ids and not stopped:
                    os.kill(pid, signal.SIGSTOP)  # the worker is frozen mid-generation, as a wedged GPU call
                    stopped = True
        assert stopped and not received[-1].finish_reason, "the stream finished before the worker was stopped"
        assert (failure.value.code.name, failure.value.reason) == ("UNAVAILABLE", "WORKER_HUNG")
        worker = _ready_again(client, pid)
        assert worker.hangs == 1 and worker.restarts == 1
        assert "SIGKILL" in worker.last_exit and "hung" in worker.last_exit
        assert client.generate("Hello", max_new_tokens=3, timeout=60).usage.completion_tokens == 3


def test_a_stopped_worker_ends_an_http_stream_with_worker_hung(watched: ServerThread) -> None:
    """A stream has sent its 200 already, so WORKER_HUNG arrives as its last event (a whole answer gets a 503)."""
    with watched.client() as client:
        pid = _ready_again(client, -1).pid
    url = f"http://127.0.0.1:{watched.app.http.port}/v1/completions"
    body = {"prompt": "Hello", "max_tokens": 500, "ignore_eos": True, "stream": True}
    events, stopped = [], False
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line.removeprefix("data: ")))
                if not stopped:
                    os.kill(pid, signal.SIGSTOP)
                    stopped = True
    assert stopped and events[-1]["error"]["code"] == "worker_hung", events[-1]
    with watched.client() as client:
        assert _ready_again(client, pid).restarts >= 1
        assert client.generate("Hello", max_new_tokens=3, timeout=60).usage.completion_tokens == 3


def test_an_idle_stopped_worker_is_found_by_its_liveness_ping(watched: ServerThread) -> None:
    with watched.client() as client:
        before = client.server_info(timeout=10).workers[0]
        os.kill(before.pid, signal.SIGSTOP)
        worker = _ready_again(client, before.pid)
        assert worker.hangs == before.hangs + 1
        assert client.generate("Hello", max_new_tokens=3, timeout=60).usage.completion_tokens == 3


def test_a_request_that_got_nothing_from_a_hung_worker_is_retried_on_another(glm_checkpoint: Path) -> None:
    settings = server_settings(glm_checkpoint, workers=2, worker_hang_timeout=HANG_TIMEOUT)
    server = ServerThread(settings).start()
    try:
        with server.client() as client:
            ready = model_pb2.WORKER_STATE_READY
            info = wait_for_info(client, lambda i: all(w.state == ready for w in i.workers), 120)
            os.kill(info.workers[0].pid, signal.SIGSTOP)
            # Both idle: the request goes to worker 0, which is stopped; the watchdog moves it to worker 1.
            result = client.generate("Hello", max_new_tokens=3, timeout=120)
            assert result.usage.completion_tokens == 3
            assert server.call(lambda: server.app.pool.num_retried) == 1
            assert wait_for_info(client, lambda i: i.workers[0].hangs == 1, 60).workers[1].hangs == 0
    finally:
        server.stop()


def test_by_default_each_worker_gets_a_timeout_derived_from_its_steps(glm_server: ServerThread) -> None:
    """The tiny model's steps take milliseconds, so the 30 s floor applies; each worker's longest step (its
    warm-up's full step at least) was reported before it served."""
    assert glm_server.settings.worker_hang_timeout is None
    with glm_server.client() as client:
        ready = model_pb2.WORKER_STATE_READY
        wait_for_info(client, lambda i: all(w.state == ready for w in i.workers), 120)
        assert client.generate("Hello", max_new_tokens=4, timeout=60).usage.completion_tokens == 4
        info = client.server_info(timeout=10)
    assert info.worker_hang_timeout_seconds == HANG_FLOOR
    pool = glm_server.app.pool
    steps = glm_server.call(lambda: [pool.watchdog.longest_step(w) for w in pool.workers])
    assert all(0 < step < HANG_FLOOR / HANG_STEP_MULTIPLE for step in steps), steps
