"""Request bodies a client gets wrong, over HTTP: answered as 400s naming the problem, in bounded time.

A body whose every list element fails validation used to be validated on the event loop error by error: an 8 MB
`prompt` of two million floats stalled every gRPC stream for 99 s and grew the gateway by 1.3 GB. Now the number
of JSON values is bounded on the raw bytes before anything parses them, and validation stops at a list's first
bad element; the test measures a live gRPC stream's longest pause beside such bodies against its own baseline.
A lone surrogate (`"\\ud800"` in the JSON, or its UTF-8 encoding in the bytes) is a 400 naming the field, not a
500 from the tokenizer; over gRPC, protobuf refuses such a string as invalid UTF-8 (INVALID_ARGUMENT).
"""

from __future__ import annotations

import json
import time

import grpc
import httpx
import pytest

from tests.http.live_stream import LiveStream, allowed_pause
from tests.support import ServerThread

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def http(glm_server: ServerThread) -> httpx.Client:
    with httpx.Client(base_url=f"http://127.0.0.1:{glm_server.app.http.port}", timeout=120) as client:
        yield client


def _error(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error", error
    return error


def _list_body(field: str, element: bytes, count: int, head: bytes = b"") -> bytes:
    """`{<head>"<field>": [element, element, ...]}` built as bytes (json.dumps would hold the GIL for seconds)."""
    return b"{" + head + b'"' + field.encode() + b'": [' + b",".join([element] * count) + b"]}"


def _chat_parts(parts: list[dict]) -> dict:
    return {"messages": [{"role": "user", "content": parts}]}


# (path, body): each would have cost the event loop seconds to minutes before the fix.
ATTACKS = [
    ("/v1/completions", _list_body("prompt", b"1.5", 2_000_000)),  # 8 MB: 99 s of stall before
    ("/v1/completions", _list_body("stop", b"1", 2_000_000, b'"prompt": "x", ')),  # 4 MB: 14.8 s
    ("/v1/chat/completions", _list_body("messages", b"1", 500_000)),  # 1 MB: 2.7 s
    ("/v1/completions", _list_body("prompt", b"[]", 5_000_000)),  # 15 MB of empty lists
    # Under the bound on JSON values: refused by validation, which stops at the first bad element.
    ("/v1/completions", _list_body("prompt", b"1.5", 50_000)),
    ("/v1/completions", _list_body("stop", b"1", 50_000, b'"prompt": "x", ')),
    ("/v1/chat/completions", _list_body("messages", b"1", 50_000)),
]


def test_bodies_that_fail_per_element_do_not_stall_a_live_grpc_stream(
    glm_server: ServerThread, http: httpx.Client
) -> None:
    with LiveStream(glm_server.target) as stream:
        baseline = stream.baseline()
        started = time.monotonic()
        answers = [http.post(path, content=body, headers=JSON) for path, body in ATTACKS]
        ended = time.monotonic()
        time.sleep(0.3)  # the stream flows on after the last answer
        pause = stream.longest_pause(started, ended + 0.3)
    assert stream.error is None, stream.error
    for (path, body), answer in zip(ATTACKS, answers, strict=True):
        assert answer.status_code == 400, (path, len(body), answer.text[:300])
    codes = [answer.json()["error"]["code"] for answer in answers]
    assert codes[:4] == ["too_many_json_values"] * 4
    assert [answer.json()["error"]["param"] for answer in answers[4:]] == ["prompt[0]", "stop[0]", "messages[0]"]
    limit = allowed_pause(baseline)
    assert pause < limit, f"the stream paused {pause:.2f}s beside the bodies (alone: {baseline:.2f}s)"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi \ud800"}]}, "messages[0].content"),
        ("/v1/chat/completions", {"messages": [{"role": "\udc00", "content": "hi"}]}, "messages[0].role"),
        ("/v1/chat/completions", _chat_parts([{"type": "text", "text": "\ud83d"}]), "messages[0].content[0].text"),
        ("/v1/completions", {"prompt": "x\ud800y"}, "prompt"),
        ("/v1/completions", {"prompt": "x", "stop": ["\udfff"]}, "stop[0]"),
        ("/v1/completions", {"prompt": "x", "model": "\ud800"}, "model"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_field(http: httpx.Client, path: str, body: dict, param: str) -> None:
    # json.dumps escapes the lone surrogate as `\ud800`, as a JSON client would send it.
    error = _error(http.post(path, content=json.dumps(body).encode(), headers=JSON))
    assert error["param"] == param and error["code"] == "invalid_unicode", error
    assert "surrogate" in error["message"]


def test_surrogate_pairs_and_raw_invalid_utf8(http: httpx.Client) -> None:
    paired = json.dumps({"prompt": "smile \U0001f600", "max_tokens": 1}).encode()  # `\ud83d\ude00`: one character
    assert b"\\ud83d\\ude00" in paired
    assert http.post("/v1/completions", content=paired, headers=JSON).status_code == 200
    # The UTF-8 encoding of U+D800 (not valid UTF-8), and a stray continuation byte, as raw bytes.
    for raw in (b'{"prompt": "x\xed\xa0\x80"}', b'{"prompt": "x\x80"}'):
        error = _error(http.post("/v1/completions", content=raw, headers=JSON))
        assert error["code"] == "malformed_json" and "UTF-8" in error["message"]


def test_grpc_refuses_an_encoded_surrogate_as_invalid_utf8(glm_server: ServerThread) -> None:
    """A Python client cannot even build it (protobuf refuses to encode a surrogate); on the wire it is a 400."""
    content = b"\xed\xa0\x80"  # U+D800 as UTF-8 would encode it
    message = b"\x0a\x04user" + b"\x12" + bytes([len(content)]) + content  # ChatMessage{role, content}
    chat = b"\x0a" + bytes([len(message)]) + message  # ChatInput{messages}
    request = b"\x22" + bytes([len(chat)]) + chat  # GenerateRequest{chat = 4}
    with glm_server.channel() as channel:
        generate = channel.unary_unary("/autoglm.v1.GenerationService/Generate")
        with pytest.raises(grpc.RpcError) as refused:
            generate(request, timeout=30)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in refused.value.details()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"prompt": [True]}, "prompt[0]"),
        ({"prompt": [1, 2.0]}, "prompt[1]"),
        ({"prompt": "x", "n": 1.0}, "n"),
        ({"prompt": "x", "stream": "true"}, "stream"),
        ({"prompt": "x", "temperature": "0.5"}, "temperature"),
    ],
)
def test_field_types_are_strict(http: httpx.Client, body: dict, param: str) -> None:
    error = _error(http.post("/v1/completions", json=body))
    assert error["param"] == param and error["code"] == "invalid_parameter", error


def test_an_integer_is_a_valid_float(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "temperature": 1})
    assert response.status_code == 200, response.text


def test_a_wrong_method_is_an_invalid_request(http: httpx.Client) -> None:
    error = _error(http.get("/v1/completions"), 405)
    assert "GET /v1/completions" in error["message"]
