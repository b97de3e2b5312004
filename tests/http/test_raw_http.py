"""The HTTP API byte by byte (httpx, no SDK): SSE framing, and bodies the SDK would never send."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from autoglm.v1 import generation_pb2
from tests.support import ServerThread


@pytest.fixture(scope="module")
def http(glm_server: ServerThread) -> httpx.Client:
    with httpx.Client(base_url=f"http://127.0.0.1:{glm_server.app.http.port}", timeout=60) as client:
        yield client


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_sse_is_framed_as_openai_frames_it(http: httpx.Client) -> None:
    body = {"model": "tiny-glm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    response = http.post("/v1/chat/completions", json=body, headers={"x-request-id": "sse-framing-1"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"] == "sse-framing-1"
    raw = response.text
    assert raw.endswith("\n\ndata: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(event.startswith("data: ") and "\n" not in event for event in events)
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert {c["id"] for c in chunks} == {"chatcmpl-sse-framing-1"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert all(c["usage"] is None for c in chunks[:-1])


def test_malformed_json_is_a_400(http: httpx.Client) -> None:
    for content in (b'{"prompt": "x",', b"\xff\xfe", b"[1, 2]", b"null"):
        response = http.post("/v1/completions", content=content, headers={"content-type": "application/json"})
        assert _error(response, 400)["type"] == "invalid_request_error"
    missing = http.post("/v1/completions", json={"max_tokens": 3})
    assert _error(missing, 400)["param"] == "prompt"


def test_a_wrong_content_type_is_a_415(http: httpx.Client) -> None:
    response = http.post("/v1/completions", content=b'{"prompt": "x"}', headers={"content-type": "text/plain"})
    assert "application/json" in _error(response, 415)["message"]
    assert _error(http.post("/v1/completions", data={"prompt": "x"}), 415)


def test_caller_request_ids_and_unknown_fields(http: httpx.Client) -> None:
    body = {"prompt": "Hello", "max_tokens": 2, "some_future_field": {"x": 1}}
    response = http.post("/v1/completions", json=body, headers={"x-request-id": "mine-42"})
    assert response.status_code == 200 and response.json()["id"] == "cmpl-mine-42"
    bad_id = http.post("/v1/completions", json=body, headers={"x-request-id": "x" * 200})
    assert _error(bad_id, 400)["param"] == "x-request-id"


def test_docs_schema_and_health(http: httpx.Client) -> None:
    assert http.get("/docs").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/models", "/v1/chat/completions", "/v1/completions"} <= set(paths)
    assert http.get("/health").json() == {"status": "ready"}
    assert _error(http.get("/v1/nothing-here"), 404)["type"] == "not_found_error"
    assert _error(http.get("/v1/completions"), 405)


def _cancel_when_running(glm_server: ServerThread, request_id: str) -> None:
    deadline = time.monotonic() + 30
    while not glm_server.call(glm_server.app.pool.is_in_flight, request_id):
        assert time.monotonic() < deadline, "the request never ran"
        time.sleep(0.02)
    with glm_server.client() as grpc_client:
        cancelled = grpc_client.cancel(request_id, timeout=30)
    assert cancelled.results[0].outcome == generation_pb2.CANCEL_OUTCOME_CANCELLED


@pytest.mark.parametrize("stream", [True, False])
def test_a_request_cancelled_by_id_over_grpc_finishes_with_abort(
    glm_server: ServerThread, http: httpx.Client, stream: bool
) -> None:
    """CancelGeneration ends an HTTP request with `finish_reason: "abort"` (vLLM's word; OpenAI's API has none),
    not "stop", which would say the model ended its answer."""
    request_id = f"cancel-me-{stream}"
    body = {"prompt": "Hello", "max_tokens": 400, "ignore_eos": True, "stream": stream}
    canceller = threading.Thread(target=_cancel_when_running, args=(glm_server, request_id))
    canceller.start()
    try:
        response = http.post("/v1/completions", json=body, headers={"x-request-id": request_id})
    finally:
        canceller.join(60)
    assert response.status_code == 200, response.text
    if stream:
        chunks = [json.loads(event[6:]) for event in response.text.split("\n\n") if event.startswith("data: {")]
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    else:
        finish = [response.json()["choices"][0]["finish_reason"]]
        assert response.json()["usage"]["completion_tokens"] < 400
    assert finish == ["abort"]
