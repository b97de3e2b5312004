"""Property test: random and absurd requests, sent as raw wire bytes, only ever get the contract's client-error
statuses (or OK), never INTERNAL or UNKNOWN, and no worker dies.

Requests are built from strategies over every field (NaN and infinite floats, huge integers, out-of-vocabulary
token ids, invalid Durations, too many stops ...), then optionally mangled on the wire: a string field with
invalid UTF-8, truncated bytes, or plain garbage, sent to any of the service's methods. Derandomized, so CI
sees the same examples every run.
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoglm.v1 import generation_pb2
from tests.support import ServerThread

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
UNARY_METHODS = (
    "/autoglm.v1.GenerationService/Generate",
    "/autoglm.v1.GenerationService/CancelGeneration",
    "/autoglm.v1.GenerationService/Tokenize",
    "/autoglm.v1.ModelService/ListModels",
    "/autoglm.v1.ModelService/GetServerInfo",
    "/grpc.health.v1.Health/Check",
)
STREAM_METHOD = "/autoglm.v1.GenerationService/GenerateStream"
U32 = 2**32 - 1

absurd_floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
small_or_huge = st.one_of(
    st.integers(0, 8), st.sampled_from([0, 1, 511, 512, 2**31 - 1, U32]), st.integers(0, U32)
)
token_ids = st.one_of(st.integers(0, 700), st.integers(0, U32))
texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "x" * 300, "\x00", "\ud7ff", "你好" * 10]))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@st.composite
def generate_requests(draw: st.DrawFn) -> generation_pb2.GenerateStreamRequest:
    """A GenerateStreamRequest (a superset of GenerateRequest on the wire) with any field set to anything."""
    message = generation_pb2.GenerateStreamRequest(
        request_id=draw(st.one_of(st.just(""), texts)),
        model=draw(st.sampled_from(["", "tiny-glm", "gpt-17", "m" * 300])),
        priority=draw(st.integers(-(2**31), 2**31 - 1) | st.integers(0, 4)),
    )
    match draw(st.sampled_from(["prompt", "chat", "ids", "none"])):
        case "prompt":
            message.prompt = draw(texts)
        case "chat":
            message.chat.SetInParent()
            for role, content in draw(st.lists(st.tuples(texts, texts), max_size=3)):
                message.chat.messages.add(role=role, content=content)
            if draw(st.booleans()):
                message.chat.add_generation_prompt = draw(st.booleans())
        case "ids":
            message.prompt_token_ids.SetInParent()
            message.prompt_token_ids.ids.extend(draw(st.lists(token_ids, max_size=8)))
    for name in ("temperature", "top_p", "repetition_penalty"):
        if draw(st.booleans()):
            setattr(message.sampling, name, draw(absurd_floats))
    if draw(st.booleans()):
        message.sampling.top_k = draw(small_or_huge)
    if draw(st.booleans()):
        message.sampling.seed = draw(st.integers(0, 2**64 - 1))
    stopping = message.stopping
    if draw(st.booleans()):
        stopping.max_new_tokens = draw(small_or_huge)
    stopping.min_new_tokens = draw(st.sampled_from([0, 2, 9, U32]))
    stopping.stop_sequences.extend(draw(st.lists(texts, max_size=18)))
    stopping.stop_token_ids.extend(draw(st.lists(token_ids, max_size=66)))
    stopping.ignore_eos = draw(st.booleans())
    stopping.include_stop_sequence = draw(st.booleans())
    if draw(st.booleans()):
        stopping.max_generation_time.seconds = draw(st.sampled_from([-1, 0, 1, 10**12, 2**62]))
        stopping.max_generation_time.nanos = draw(st.sampled_from([-1, 0, 5, 10**9]))
    message.output.return_token_ids = draw(st.booleans())
    message.output.return_logprobs = draw(st.booleans())
    message.output.top_logprobs = draw(st.sampled_from([0, 1, 5, 21, 700, U32]))
    if draw(st.booleans()):
        message.output.skip_special_tokens = draw(st.booleans())
    message.stream_options.min_tokens_per_message = draw(st.sampled_from([0, 1, 3, 5000, U32]))
    return message


@st.composite
def wire_bytes(draw: st.DrawFn, message: generation_pb2.GenerateStreamRequest) -> bytes:
    """The message's bytes, maybe mangled: a string with invalid UTF-8, a truncation, or garbage."""
    data = message.SerializeToString()
    match draw(st.sampled_from(["as is", "as is", "bad utf-8", "bad nested utf-8", "truncated", "garbage"])):
        case "bad utf-8":  # request_id, model or prompt
            data += _length_delimited(
                draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([b"\xff", b"a\xc3("]))
            )
        case "bad nested utf-8":  # stopping.stop_sequences[...] or chat.messages[...].content
            invalid = draw(st.sampled_from([b"\xed\xa0\x80", b"\xfe\xfe"]))
            if draw(st.booleans()):
                data += _length_delimited(7, _length_delimited(3, invalid))
            else:
                data += _length_delimited(4, _length_delimited(1, _length_delimited(2, invalid)))
        case "truncated":
            data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
        case "garbage":
            data = draw(st.binary(max_size=64))
    return data


def _status(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def raw_channel(glm_server: ServerThread):
    with glm_server.channel() as channel:
        yield channel


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_random_requests_get_only_client_error_statuses(raw_channel: grpc.Channel, data: st.DataObject) -> None:
    message = data.draw(generate_requests())
    wire = data.draw(wire_bytes(message))
    identity = {"request_serializer": bytes, "response_deserializer": bytes}
    if data.draw(st.booleans(), label="stream"):
        call = raw_channel.unary_stream(STREAM_METHOD, **identity)
        code = _status(lambda: list(call(wire, timeout=60)))
    else:
        # Generate parses what GenerateStream does minus stream_options; other methods see foreign bytes.
        method = data.draw(st.sampled_from(UNARY_METHODS[:1] * 4 + UNARY_METHODS[1:]), label="method")
        code = _status(lambda: raw_channel.unary_unary(method, **identity)(wire, timeout=60))
    assert code in ALLOWED, f"{code} for {message!r} sent as {wire!r}"


def test_the_workers_survived_the_fuzzing(glm_server: ServerThread) -> None:
    """Runs after the property test (file order): every worker is still up and the server still generates."""
    assert glm_server.app is not None
    pool = glm_server.app.pool
    assert pool.num_ready == pool.num_workers
    assert all(worker.is_ready for worker in pool.workers)
    with glm_server.client() as client:
        client.wait_until_ready(timeout=30)
        assert client.generate("Hello", max_new_tokens=4).usage.completion_tokens > 0
