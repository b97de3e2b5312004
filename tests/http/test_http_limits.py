"""The HTTP API under the same keys, limits and drain as gRPC: 401, 409 (within one owner: ids are scoped to it),
413, 429 (capacity and rate) with Retry-After, a disconnecting client freeing its slot, and 503 while draining.

One server for the module: one worker with one batch slot and one queue place (capacity two), the demo's model
size (a long request runs for many seconds), API keys, five requests per minute per key, 64 KiB bodies.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import openai
import pytest

from tests.security.conftest import write_keys
from tests.support import ServerThread, server_settings
from workers.model.checkpoints import DEMO_SPEC, build_checkpoint

ALICE, BOB, CAROL, DAVE = (f"{name}-key-0123456789abcdef" for name in ("alice", "bob", "carol", "dave"))
LONG = {"prompt": "Hello", "max_tokens": 4000, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("slow"), replace(DEMO_SPEC, seed=3))
    keys = write_keys(tmp_path_factory.mktemp("keys") / "keys",
                      {ALICE: "alice", BOB: "bob", CAROL: "carol", DAVE: "dave"})  # fmt: skip
    settings = server_settings(
        checkpoint, workers=1, max_batch_size=1, max_queue_depth=1, api_keys_file=str(keys),
        rate_limit_requests_per_minute=5, max_message_bytes=65536,
    )  # fmt: skip
    server = ServerThread(settings).start()
    yield server
    server.stop()


def _base(server: ServerThread) -> str:
    return f"http://127.0.0.1:{server.app.http.port}"


def _sdk(server: ServerThread, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=_base(server) + "/v1", api_key=key, max_retries=0)


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _wait_until_idle(server: ServerThread, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while server.call(lambda: server.app.pool.num_in_flight) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.call(lambda: server.app.pool.num_in_flight) == 0, "a disconnected request kept its slot"


def test_calls_need_a_known_key_health_and_docs_do_not(server: ServerThread) -> None:
    with pytest.raises(openai.AuthenticationError):
        _sdk(server, "wrong-key-0123456789abcdef").models.list()
    with pytest.raises(openai.AuthenticationError):
        _sdk(server, "wrong-key-0123456789abcdef").completions.create(model="", prompt="x", max_tokens=1)
    bare = httpx.post(_base(server) + "/v1/completions", json={"prompt": "x"}, timeout=30)
    assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
    assert bare.json()["error"]["type"] == "authentication_error"
    assert httpx.get(_base(server) + "/health", timeout=30).status_code == 200
    assert httpx.get(_base(server) + "/docs", timeout=30).status_code == 200
    assert [m.id for m in _sdk(server, ALICE).models.list().data] == [server.app.frontend.model.model_id]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_client_still_sending_gets_the_413(server: ServerThread, chunked: bool) -> None:
    """Byte by byte: headers and a first MiB, a pause in which the 413 is sent, then the rest. Before, the
    server had closed with the body unread, and the rest of it drew a reset that lost the 413."""
    piece = b"a" * (1 << 20)
    if chunked:
        framing, piece = b"Transfer-Encoding: chunked", b"%x\r\n%s\r\n" % (len(piece), piece)
        tail = b"0\r\n\r\n"
    else:
        framing, tail = b"Content-Length: %d" % (4 * len(piece)), b""
    head = b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
    head += b"Authorization: Bearer %s\r\n%s\r\n\r\n" % (ALICE.encode(), framing)
    with socket.create_connection(("127.0.0.1", server.app.http.port), timeout=30) as sock:
        sock.sendall(head + piece)
        time.sleep(0.3)  # the server has answered by now
        sock.sendall(piece * 3 + tail)
        answer = b""
        while b"}}" not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413") and b"body_too_large" in answer


def _slowly(body: bytes) -> Iterator[bytes]:
    """The body in 64 KiB pieces, a little apart: still sending when the server has answered."""
    for start in range(0, len(body), 65536):
        time.sleep(0.002)
        yield body[start : start + 65536]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_is_a_413_and_the_connection_stays(server: ServerThread, chunked: bool) -> None:
    """The server reads through the rest of the body (discarding it), so the client, still sending, gets the 413;
    before, 4 MiB over a 64 KiB limit was a connection reset. The connection stays usable."""
    body = b'{"prompt": "' + b"a" * (4 << 20) + b'"}'
    headers = {**_auth(ALICE), "content-type": "application/json"}
    if not chunked:
        headers["content-length"] = str(len(body))
    content = _slowly(body)
    with httpx.Client(base_url=_base(server), timeout=30) as client:
        response = client.post("/v1/completions", content=content, headers=headers)
        assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.headers.get("connection") != "close"
        assert client.get("/health").status_code == 200  # on the same connection


def test_capacity_duplicates_and_disconnects(server: ServerThread) -> None:
    url = _base(server) + "/v1/completions"
    with (
        httpx.Client(timeout=60) as first,
        httpx.Client(timeout=60) as second,
        first.stream(
            "POST", url, json={**LONG, "stream": True}, headers={**_auth(ALICE), "x-request-id": "long-1"}
        ) as running,
    ):
        assert running.status_code == 200
        lines = running.iter_lines()  # kept: an iterator dropped closes the response (a disconnect)
        next(lines)  # the first token: the one batch slot is taken
        with pytest.raises(openai.ConflictError) as duplicate:
            # The same key: request ids are scoped to their owner.
            _sdk(server, ALICE).completions.create(model="", prompt="x", max_tokens=1,
                                                   extra_headers={"x-request-id": "long-1"})  # fmt: skip
        assert duplicate.value.code == "duplicate_request_id"
        # Ids are scoped to their key's owner: Carol's "long-1" is her own, neither a conflict nor a probe.
        carol = {**_auth(CAROL), "x-request-id": "long-1"}
        with second.stream("POST", url, json={**LONG, "stream": True}, headers=carol) as waiting:
            assert waiting.status_code == 200  # admitted to the queue's one place
            assert waiting.headers["x-request-id"] == "long-1"
            with pytest.raises(openai.RateLimitError) as full:
                _sdk(server, BOB).completions.create(model="", prompt="x", max_tokens=1)
            assert full.value.code == "queue_full"
            assert int(full.value.response.headers["retry-after"]) >= 1
    _wait_until_idle(server)  # both clients went away: their requests left the worker
    # A client that stops waiting for a whole (not streamed) answer frees its slot too.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=LONG, headers=_auth(ALICE), timeout=httpx.Timeout(60, read=1.0))
    _wait_until_idle(server)
    done = _sdk(server, ALICE).completions.create(model="", prompt="Hello", max_tokens=3)
    assert done.usage.completion_tokens == 3


def test_the_rate_limit_is_per_key_with_retry_after(server: ServerThread) -> None:
    dave = _sdk(server, DAVE)
    for _ in range(5):
        dave.completions.create(model="", prompt="Hi", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as limited:
        dave.completions.create(model="", prompt="Hi", max_tokens=1)
    assert limited.value.code == "rate_limited"
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert _sdk(server, BOB).completions.create(model="", prompt="Hi", max_tokens=1).usage.completion_tokens == 1


def test_draining_refuses_new_calls_with_503(server: ServerThread) -> None:
    """Last in this module: the server does not come back from a drain."""
    server.call(server.app.pool.start_draining)
    with pytest.raises(openai.InternalServerError) as refused:
        _sdk(server, CAROL).completions.create(model="", prompt="x", max_tokens=1)
    assert refused.value.status_code == 503 and refused.value.code == "server_draining"
    assert httpx.get(_base(server) + "/health", timeout=30).status_code == 503
