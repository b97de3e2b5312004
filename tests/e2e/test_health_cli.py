"""`autoglm-rpc health` (the Docker HEALTHCHECK) against real servers: exit 0 only when SERVING."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from autoglm_rpc.startup.cli import main
from tests.support import ServerThread

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "autoglm_rpc.startup.cli"]
READINESS = "autoglm.v1.GenerationService"


@pytest.fixture
def not_serving_target() -> Iterator[str]:
    """A plain gRPC server whose readiness is NOT_SERVING (as while the model loads or the server drains)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set(READINESS, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("service", ["", READINESS])
def test_serving_exits_0(glm_server: ServerThread, service: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--target", glm_server.target, "--service", service]) == 0
    assert capsys.readouterr().out == "SERVING\n"


def test_not_serving_exits_1(not_serving_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--target", not_serving_target, "--service", READINESS]) == 1
    assert capsys.readouterr().out == "NOT_SERVING\n"


def test_unknown_service_exits_1(glm_server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--target", glm_server.target, "--service", "no.such.Service"]) == 1
    assert capsys.readouterr().out == "NOT_FOUND\n"


def test_nothing_listening_exits_1_within_the_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{_free_port()}"
    assert main(["health", "--target", target, "--timeout", "2"]) == 1
    assert capsys.readouterr().out in ("UNAVAILABLE\n", "DEADLINE_EXCEEDED\n")


def test_the_command_line_entry_point(glm_server: ServerThread) -> None:
    """As Docker's HEALTHCHECK runs it: a fresh process, the readiness service."""
    result = subprocess.run(
        [*CLI, "health", "--target", glm_server.target, "--service", READINESS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "SERVING\n"), result.stderr
