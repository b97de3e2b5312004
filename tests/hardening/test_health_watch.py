"""Health/Watch is open without a key, so the number of open Watch streams is capped; Check never is."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.security.conftest import gateway_only
from tests.support import server_settings


def test_watch_streams_past_the_cap_are_refused_until_one_closes(glm_checkpoint: Path) -> None:
    settings = server_settings(glm_checkpoint, max_health_watchers=2)
    with gateway_only(settings) as app, grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        watches = [health.Watch(request, timeout=60) for _ in range(2)]
        for watch in watches:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as refused:
            next(health.Watch(request, timeout=60))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert health.Check(request, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        watches.pop().cancel()
        deadline_watch = None
        for _ in range(300):  # the server sees the cancel shortly after; then a new Watch is let in
            deadline_watch = health.Watch(request, timeout=60)
            try:
                assert next(deadline_watch).status == health_pb2.HealthCheckResponse.SERVING
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                time.sleep(0.1)
        else:
            raise AssertionError("no Watch was let in after one closed")
        deadline_watch.cancel()
        watches[0].cancel()
