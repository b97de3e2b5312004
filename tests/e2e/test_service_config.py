"""The client service config of docs/deployment.md does what it says with a real gRPC client: calls are spread
over every server address (round_robin) and a call answered UNAVAILABLE is retried on another one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest

from autoglm.v1 import model_pb2
from tests.doc_blocks import block

NUM_CALLS = 40


def documented_service_config() -> dict:
    return json.loads(block("docs/deployment.md", "service-config", "json"))


@dataclass
class Backend:
    """A real gRPC server answering ModelService/GetServerInfo; its first `num_failures` calls get UNAVAILABLE,
    as from a pod that is draining."""

    name: str
    num_failures: int = 0
    num_calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get_server_info(self, request: model_pb2.GetServerInfoRequest, context: grpc.ServicerContext):
        with self.lock:
            self.num_calls += 1
            failing = self.num_calls <= self.num_failures
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        return model_pb2.GetServerInfoResponse(server_version=self.name)


@pytest.fixture
def backends() -> Iterator[list[tuple[Backend, int]]]:
    started = []
    for backend in (Backend("a", num_failures=3), Backend("b")):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(
            backend.get_server_info,
            request_deserializer=model_pb2.GetServerInfoRequest.FromString,
            response_serializer=model_pb2.GetServerInfoResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("autoglm.v1.ModelService", {"GetServerInfo": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started.append((server, backend, port))
    yield [(backend, port) for _, backend, port in started]
    for server, _, _ in started:
        server.stop(0)


def test_round_robin_spreads_calls_and_retries_unavailable(backends: list[tuple[Backend, int]]) -> None:
    config = documented_service_config()
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in backends)
    options = [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1)]
    with grpc.insecure_channel(target, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        call = channel.unary_unary(
            "/autoglm.v1.ModelService/GetServerInfo",
            request_serializer=model_pb2.GetServerInfoRequest.SerializeToString,
            response_deserializer=model_pb2.GetServerInfoResponse.FromString,
        )
        answers = [call(model_pb2.GetServerInfoRequest(), timeout=10).server_version for _ in range(NUM_CALLS)]
    (a, _), (b, _) = backends
    assert a.num_calls > a.num_failures, "backend a never answered: its UNAVAILABLE calls were not retried"
    assert len(answers) == NUM_CALLS and set(answers) == {"a", "b"}, "calls were not spread over both backends"
    assert a.num_calls + b.num_calls == NUM_CALLS + a.num_failures  # every failure cost exactly one retry
