"""HTTP connections the gateway can afford: a cap, header and body timeouts, bounded headers, a quiet accept log.

Before: connections that never finished their headers were never timed out and never capped (1,500 stayed open;
at the open-file limit gRPC calls failed and the log took 269,722 lines of `socket.accept() out of system
resource`), and a 4 MiB header or 20,000 headers were answered 200. Most tests here run the HTTP listener alone
over a trivial app with short limits; one floods the full gateway's listener with idle connections beside a live
gRPC stream, and one exhausts a child process's descriptors to count the accept failures it logs.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from autoglm.v1 import generation_pb2, generation_pb2_grpc
from autoglm_rpc.openai_api.connections import HttpLimits, affordable_limits
from autoglm_rpc.openai_api.server import HttpServer
from tests.http.live_stream import LiveStream, allowed_pause
from tests.support import ServerThread

SHORT = HttpLimits(max_connections=4, header_timeout=0.5, body_timeout=0.5, keep_alive_timeout=0.5,
                   max_header_bytes=8192, max_headers=20)  # fmt: skip


async def _echo_app(scope: dict, receive, send) -> None:
    """Reads the whole body, answers 200 with its length."""
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(size).encode()})


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    """The HTTP listener over `_echo_app` with `SHORT` limits, on its own loop in a thread; yields its port."""
    loop = asyncio.new_event_loop()
    server = HttpServer.bind(_echo_app, "127.0.0.1", 0, limits=SHORT)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(_start(server), loop).result(10)
    yield server.port
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


async def _start(server: HttpServer) -> None:
    server.start()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or 10 s pass)."""
    data = b""
    sock.settimeout(10)
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _status_and_error(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(listener: int) -> None:
    with _connect(listener) as sock:
        started = time.monotonic()
        assert _read_all(sock) == b""
        assert 0.4 < time.monotonic() - started < 5


def test_headers_that_do_not_finish_get_a_408(listener: int) -> None:
    with _connect(listener) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\n")
        status, error = _status_and_error(_read_all(sock))
    assert status == 408 and error["code"] == "request_timeout" and error["type"] == "invalid_request_error"


def test_a_body_that_does_not_finish_gets_a_408(listener: int) -> None:
    with _connect(listener) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly part")
        status, error = _status_and_error(_read_all(sock))
    assert status == 408 and "body" in error["message"]


def test_an_idle_kept_alive_connection_is_closed(listener: int) -> None:
    with _connect(listener) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        started = time.monotonic()
        assert _read_all(sock).startswith(b"HTTP/1.1 200")
        assert time.monotonic() - started < 5  # closed after the keep-alive timeout


@pytest.mark.parametrize("shape", ["one huge header", "many headers"])
def test_oversized_headers_get_a_431_not_a_reset(listener: int, shape: str) -> None:
    if shape == "one huge header":
        headers = b"X-Big: " + b"a" * (4 << 20) + b"\r\n"  # 4 MiB
    else:
        headers = b"".join(b"X-%d: v\r\n" % i for i in range(20_000))
    with httpx.Client(timeout=10) as client:
        request = b"GET /x HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n"
        with _connect(listener) as sock:
            sock.sendall(request)
            status, error = _status_and_error(_read_all(sock))
        assert status == 431 and error["code"] == "headers_too_large"
        assert client.get(f"http://127.0.0.1:{listener}/x", headers={"X-Small": "ok"}).status_code == 200


def test_connections_over_the_cap_get_a_503(listener: int) -> None:
    idle = [_connect(listener) for _ in range(SHORT.max_connections)]
    try:
        time.sleep(0.1)  # accepted
        with _connect(listener) as extra:
            status, error = _status_and_error(_read_all(extra))
        assert status == 503 and error["code"] == "too_many_connections"
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.1)
    assert httpx.get(f"http://127.0.0.1:{listener}/x", timeout=10).status_code == 200


def test_the_cap_stays_under_half_the_open_file_limit() -> None:
    assert affordable_limits(HttpLimits(max_connections=1000), 1024).max_connections == 512
    assert affordable_limits(HttpLimits(max_connections=1000), 65536).max_connections == 1000


_IDLE_FLOOD = textwrap.dedent(
    """
    import socket, sys
    idle = [socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) for _ in range(int(sys.argv[2]))]
    print("open", flush=True)
    sys.stdin.read()  # until the test closes it
    """
)


def test_idle_connections_beside_a_live_grpc_stream(glm_server: ServerThread) -> None:
    """1,500 connections that never send a byte, from another process as an attacker's would be: the cap (1000)
    holds, the gRPC stream flows on and a new gRPC connection and call are served while HTTP is full."""
    http = glm_server.app.http
    cap = http.limits.max_connections
    with LiveStream(glm_server.target) as stream:
        baseline = stream.baseline()
        started = time.monotonic()
        flood = subprocess.Popen([sys.executable, "-c", _IDLE_FLOOD, str(http.port), str(cap + 500)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert flood.stdout is not None and flood.stdout.readline() == "open\n"
            time.sleep(1.0)  # all accepted by now; the 500 over the cap answered and closed
            with glm_server.channel() as channel:
                stub = generation_pb2_grpc.GenerationServiceStub(channel)
                reply = stub.Generate(generation_pb2.GenerateRequest(prompt="hi", stopping={"max_new_tokens": 2}),
                                      timeout=30)  # fmt: skip
            num_open = glm_server.call(lambda: len(http._server.server_state.connections))
            refused = httpx.get(f"http://127.0.0.1:{http.port}/health", timeout=10)
            ended = time.monotonic()
        finally:
            flood.communicate(timeout=30)  # closes its stdin: it exits, its connections close
        pause = stream.longest_pause(started, ended)
    assert stream.error is None, stream.error
    assert reply.usage.completion_tokens == 2
    assert num_open <= cap
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "too_many_connections"
    assert pause < allowed_pause(baseline), f"the stream paused {pause:.2f}s (alone: {baseline:.2f}s)"
    deadline = time.monotonic() + 10
    while glm_server.call(lambda: len(http._server.server_state.connections)) > 1:
        assert time.monotonic() < deadline, "closed connections were not let go"
        time.sleep(0.1)
    assert httpx.get(f"http://127.0.0.1:{http.port}/health", timeout=10).status_code == 200


_EXHAUST = textwrap.dedent(
    """
    import asyncio, logging, resource, socket, sys, time
    from autoglm_rpc.security import open_files
    from autoglm_rpc.openai_api.server import HttpServer

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    raised = open_files.raise_open_file_limit()
    print("raised", raised == min(hard, open_files.MAX_OPEN_FILES))
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("asyncio").addHandler(handler)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main():
        server = HttpServer.bind(app, "127.0.0.1", 0)
        server.start()
        await asyncio.sleep(0.2)
        clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
        hogs = []
        try:
            while True:
                hogs.append(open("/dev/null"))
        except OSError:
            pass
        await asyncio.sleep(2.5)  # accept fails all along: the listener has no descriptor for a connection
        for hog in hogs:
            hog.close()
        await asyncio.sleep(1.5)  # descriptors back: the waiting connections are accepted and answered
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
        print("answered", (await reader.readline()).startswith(b"HTTP/1.1 200"))
        writer.close()
        for client in clients:
            client.close()
        await server.stop()

    asyncio.run(main())
    failures = [line for line in lines if "accept" in line]
    print("lines", len(failures))
    print(failures[0] if failures else "-")
    """
)


def test_running_out_of_descriptors_is_logged_once_per_interval() -> None:
    """A child lowers its own open-file limit and exhausts it: accept fails for seconds, one line says so."""
    command = [sys.executable, "-c", _EXHAUST]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    out = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert out["raised"] == "True"
    assert out["answered"] == "True"
    assert int(out["lines"]) == 1, done.stdout
    assert "Too many open files" in done.stdout and "cannot accept" in done.stdout
