"""SIGTERM drains: readiness NOT_SERVING first, new calls UNAVAILABLE / SERVER_DRAINING, the stream in flight
finishes normally, then the workers stop and the process exits 0. The same when the whole process group gets the
signal; a second signal cuts what is still running, saying so."""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autoglm.v1 import types_pb2
from autoglm_rpc.client import AutoglmError, Client
from autoglm_rpc.startup.stop_signals import REPEAT_WINDOW, StopSignals
from tests.serve_process import ServeProcess, wait_until_group_is_gone
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


def _serve_in_own_group(
    tmp_path_factory: pytest.TempPathFactory, grace: str, tensor_parallel_size: int = 1
) -> ServeProcess:
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("group"), DEMO_SPEC)
    flags = ["--model", str(checkpoint), "--device", "cpu", "--workers", str(tensor_parallel_size)]
    flags += ["--tensor-parallel-size", str(tensor_parallel_size), "--worker-threads", "1", "--log-format", "text"]
    serve = ServeProcess(flags, {"AUTOGLM_GRACE_PERIOD": grace}, own_group=True)
    serve.wait_for(r"ready: 1 of 1 worker", 120)
    return serve


@pytest.mark.parametrize("tensor_parallel_size", [1, 2], ids=["one worker", "a replica of two ranks"])
def test_sigterm_to_the_process_group_drains_like_sigterm_to_the_gateway(
    tmp_path_factory: pytest.TempPathFactory, tensor_parallel_size: int
) -> None:
    """systemd's KillMode=control-group and `kill -- -PGID` signal the workers (and their tensor-parallel ranks)
    too: they ignore it, and the stream in flight still finishes; then every process of the group is gone."""
    serve = _serve_in_own_group(tmp_path_factory, "120", tensor_parallel_size)
    try:
        with Client(serve.target) as client:
            stream = client.stream("Hello", max_new_tokens=300, stopping={"ignore_eos": True}, timeout=120)
            received = [next(stream), next(stream)]
            os.killpg(serve.pid, signal.SIGTERM)
            received += list(stream)
        assert received[-1].finish_reason == types_pb2.FINISH_REASON_MAX_NEW_TOKENS
        assert received[-1].usage.completion_tokens == 300
        assert serve.process.wait(timeout=60) == 0
        assert not wait_until_group_is_gone(serve.pid, 30), "processes of the group outlived the gateway"
        log = serve.log()
        assert "draining: 1 call(s) in flight" in log and "died" not in log, log
    finally:
        serve.close()


def test_a_second_signal_cuts_the_streams_and_says_so(tmp_path_factory: pytest.TempPathFactory) -> None:
    serve = _serve_in_own_group(tmp_path_factory, "120")
    try:
        with Client(serve.target) as client:
            stream = client.stream("Hello", max_new_tokens=NUM_TOKENS, stopping={"ignore_eos": True}, timeout=120)
            next(stream), next(stream)
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait_for(r"draining: 1 call\(s\) in flight", 30)
            # Past the window in which the same signal again is one stop delivered twice (timeout(1) does that).
            time.sleep(REPEAT_WINDOW + 0.2)
            os.killpg(serve.pid, signal.SIGTERM)
            with pytest.raises(AutoglmError) as cut:
                list(stream)
        assert (cut.value.code, cut.value.reason) == (grpc.StatusCode.UNAVAILABLE, "SERVER_DRAINING")
        assert "stopped by a second signal" in str(cut.value), str(cut.value)
        assert serve.process.wait(timeout=60) == 0
        assert not wait_until_group_is_gone(serve.pid, 30), "processes of the group outlived the gateway"
    finally:
        serve.close()


def test_the_same_signal_twice_at_once_is_one_stop() -> None:
    cuts: list[None] = []
    now = [100.0]
    signals = StopSignals(lambda: cuts.append(None), clock=lambda: now[0])
    signals.received(signal.SIGTERM)
    now[0] += 0.01  # timeout(1): the process, then its group
    signals.received(signal.SIGTERM)
    assert signals.stopped.is_set() and not cuts
    now[0] += REPEAT_WINDOW
    signals.received(signal.SIGTERM)
    signals.received(signal.SIGINT)
    assert len(cuts) == 2
