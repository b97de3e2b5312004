"""SIGTERM drains: readiness NOT_SERVING first, new calls UNAVAILABLE / SERVER_DRAINING, the stream in flight
finishes normally, then the workers stop and the process exits 0."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autoglm.v1 import types_pb2
from autoglm_rpc.client import AutoglmError, Client
from tests.serve_process import ServeProcess
from workers.model.checkpoints import DEMO_SPEC, build_checkpoint

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
# Seconds of work for the demo-size model on any machine, so the stream is still running during the checks.
NUM_TOKENS = 1000


def test_sigterm_drains_then_exits_zero(tmp_path_factory: pytest.TempPathFactory) -> None:
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("drain"), DEMO_SPEC)
    flags = ["--model", str(checkpoint), "--device", "cpu", "--workers", "1", "--worker-threads", "1"]
    serve = ServeProcess(flags, {"AUTOGLM_GRACE_PERIOD": "120"})
    try:
        serve.wait_for(r"ready: 1 of 1 worker", 120)
        with Client(serve.target) as client, grpc.insecure_channel(serve.target) as channel:
            stream = client.stream("Hello", max_new_tokens=NUM_TOKENS, stopping={"ignore_eos": True}, timeout=300)
            received = [next(stream), next(stream)]  # admitted, and streaming
            serve.terminate()

            health = health_pb2_grpc.HealthStub(channel)
            readiness = health_pb2.HealthCheckRequest(service="autoglm.v1.GenerationService")
            assert any(r.status == NOT_SERVING for r in health.Watch(readiness, timeout=30))
            # Liveness stays SERVING while draining: the process is healthy, only leaving.
            assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == SERVING
            with pytest.raises(AutoglmError) as refused:
                client.generate("Hello", max_new_tokens=2, timeout=10)
            assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE, "SERVER_DRAINING")
            info = client.server_info(timeout=10)
            assert info.draining
            assert info.workers[0].in_flight_requests == 1, "the stream ended before the drain could be seen"

            received += list(stream)  # the stream in flight finishes normally
            last = received[-1]
            assert last.finish_reason == types_pb2.FINISH_REASON_MAX_NEW_TOKENS
            assert last.usage.completion_tokens == NUM_TOKENS
        assert serve.process.wait(timeout=60) == 0
        log = serve.log()
        assert "draining: 1 call(s) in flight" in log
        assert "drain grace over" not in log
    finally:
        serve.close()
