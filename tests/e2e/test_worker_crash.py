"""A worker that dies mid-request: its requests end with UNAVAILABLE / WORKER_CRASHED at once, readiness turns
NOT_SERVING while no worker is left, and the worker is restarted (GetServerInfo shows it)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autoglm.v1 import model_pb2
from autoglm_rpc.client import AutoglmError
from tests.support import ServerThread, server_settings
from workers.model.checkpoints import DEMO_SPEC, build_checkpoint

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
READINESS = health_pb2.HealthCheckRequest(service="autoglm.v1.GenerationService")


def test_killed_worker_fails_its_stream_then_restarts(tmp_path_factory: pytest.TempPathFactory) -> None:
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("crash"), replace(DEMO_SPEC, seed=4))
    # The restart waits a second, and loading takes seconds more: long enough to see the server without a worker.
    settings = server_settings(checkpoint, workers=1, restart_backoff_initial=1.0)
    server = ServerThread(settings).start()
    try:
        (worker,) = server.app.pool.workers
        with server.client() as client, server.channel() as channel:
            (first,) = client.server_info().workers
            assert (first.worker_id, first.device, first.restarts, first.last_exit) == (0, "cpu", 0, "")
            first_pid = first.pid
            assert first_pid == worker.pid
            stream = client.stream("Hello", max_new_tokens=4000, stopping={"ignore_eos": True}, timeout=60)
            next(stream)  # admitted
            next(stream)  # and it has streamed a token: it cannot be retried elsewhere
            killed_at = time.monotonic()
            os.kill(first_pid, signal.SIGKILL)
            with pytest.raises(AutoglmError) as caught:
                list(stream)
            # The death is seen through the process sentinel at once, not by a periodic check.
            assert time.monotonic() - killed_at < 1.0
            assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.UNAVAILABLE, "WORKER_CRASHED")

            watch = health_pb2_grpc.HealthStub(channel).Watch(READINESS, timeout=60)
            assert any(r.status == NOT_SERVING for r in watch)
            with pytest.raises(AutoglmError) as refused:
                client.generate("Hello", max_new_tokens=2)
            assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE, "NO_READY_WORKER")
            (down,) = client.server_info().workers
            assert down.state in (model_pb2.WORKER_STATE_RESTARTING, model_pb2.WORKER_STATE_STARTING)
            assert down.last_exit == "killed by signal SIGKILL"

            assert any(r.status == SERVING for r in watch)  # restarted and loaded again
            assert client.generate("Hello", max_new_tokens=3, timeout=30).usage.completion_tokens == 3
            (back,) = client.server_info().workers
            assert (back.state, back.restarts, back.last_exit) == (
                model_pb2.WORKER_STATE_READY, 1, "killed by signal SIGKILL",
            )  # fmt: skip
            assert back.pid not in (0, first_pid)
    finally:
        server.stop()
