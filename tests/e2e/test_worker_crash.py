"""A worker that dies mid-request: its requests end with UNAVAILABLE / WORKER_CRASHED, at once, and readiness
turns NOT_SERVING while no worker is left."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autoglm_rpc.client import AutoglmError
from tests.support import ServerThread, server_settings
from workers.checkpoints import DEMO_SPEC, build_checkpoint


def test_killed_worker_fails_its_stream_and_readiness(tmp_path_factory: pytest.TempPathFactory) -> None:
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("crash"), replace(DEMO_SPEC, seed=4))
    server = ServerThread(server_settings(checkpoint, workers=1)).start()
    try:
        (worker,) = server.app.pool.workers
        with server.client() as client, server.channel() as channel:
            stream = client.stream("Hello", max_new_tokens=4000, stopping={"ignore_eos": True}, timeout=60)
            next(stream)  # admitted and running
            os.kill(worker.pid, signal.SIGKILL)
            with pytest.raises(AutoglmError) as caught:
                list(stream)
            assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.UNAVAILABLE, "WORKER_CRASHED")
            readiness = health_pb2.HealthCheckRequest(service="autoglm.v1.GenerationService")
            watch = health_pb2_grpc.HealthStub(channel).Watch(readiness, timeout=30)
            assert any(r.status == health_pb2.HealthCheckResponse.NOT_SERVING for r in watch)
            with pytest.raises(AutoglmError) as refused:
                client.generate("Hello", max_new_tokens=2)
            assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE, "NO_READY_WORKER")
    finally:
        server.stop()
