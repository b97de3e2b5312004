"""`autoglm-rpc health`: one `grpc.health.v1.Health/Check` call, for container and orchestrator health checks.

Service "" is liveness (the process serves gRPC); `autoglm.v1.GenerationService` is readiness (a worker is ready
and the server is not draining). The answer is SERVING, NOT_SERVING, or the failed call's status code name
(UNAVAILABLE when nothing listens, NOT_FOUND for a service the server does not know, DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.ServingStatus.Name(health_pb2.HealthCheckResponse.SERVING)


def check_health(target: str, service: str = "", timeout: float = 5.0) -> str:
    """Ask `target` for the health of `service`; return the status name (SERVING means healthy). Never raises
    for a failed call: its status code's name is the answer."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            return code.name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
