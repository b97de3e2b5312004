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
absurd_ints = st.one_of(st.sampled_from([0, 1, 511, 512, 2**31 - 1, U32]), st.integers(0, U32))
absurd_token_ids = st.lists(st.one_of(st.integers(0, 700), st.integers(0, U32)), max_size=70)
absurd_texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "x" * 300, "\x00", "你好" * 10]))
valid_texts = st.text(min_size=1, max_size=30)
FIELDS = (
    "request_id", "model", "priority", "input", "temperature", "top_p", "top_k", "repetition_penalty", "seed",
    "max_new_tokens", "min_new_tokens", "stop_sequences", "stop_token_ids", "max_generation_time",
    "top_logprobs", "min_tokens_per_message",
)  # fmt: skip


@st.composite
def generate_requests(draw: st.DrawFn) -> generation_pb2.GenerateStreamRequest:
    """A GenerateStreamRequest (a superset of GenerateRequest on the wire): a few fields, maybe none, take
    absurd values and the rest valid ones, so that both refusals and real generations are exercised."""
    broken = draw(st.sets(st.sampled_from(FIELDS), max_size=3), label="broken fields")

    def pick(name: str, valid: st.SearchStrategy, absurd: st.SearchStrategy):
        return draw(absurd if name in broken else valid, label=name)

    message = generation_pb2.GenerateStreamRequest(
        request_id=pick("request_id", st.just(""), absurd_texts),
        model=pick("model", st.sampled_from(["", "tiny-glm"]), st.sampled_from(["gpt-17", "m" * 300])),
        priority=pick("priority", st.integers(0, 3), st.integers(-(2**31), 2**31 - 1)),
    )
    _set_input(message, draw, "input" in broken)
    sampling = message.sampling
    for name, valid in (("temperature", st.floats(0, 2)), ("top_p", st.floats(0.05, 1)),
                        ("repetition_penalty", st.floats(0.5, 2))):  # fmt: skip
        if draw(st.booleans()) or name in broken:
            setattr(sampling, name, pick(name, valid, absurd_floats))
    if draw(st.booleans()) or "top_k" in broken:
        sampling.top_k = pick("top_k", st.integers(0, 50), absurd_ints)
    if draw(st.booleans()) or "seed" in broken:
        sampling.seed = pick("seed", st.integers(0, 2**63 - 1), st.integers(0, 2**64 - 1))
    _set_stopping(message.stopping, pick)
    output = message.output
    output.return_token_ids, output.return_logprobs = draw(st.booleans()), draw(st.booleans())
    output.top_logprobs = pick("top_logprobs", st.integers(0, 5 if output.return_logprobs else 0),
                               st.sampled_from([1, 21, 700, U32]))  # fmt: skip
    if draw(st.booleans()):
        output.skip_special_tokens = draw(st.booleans())
    message.stream_options.min_tokens_per_message = pick(
        "min_tokens_per_message", st.integers(0, 4), st.sampled_from([5000, U32])
    )
    return message


def _set_input(message: generation_pb2.GenerateStreamRequest, draw: st.DrawFn, is_broken: bool) -> None:
    kind = draw(st.sampled_from(["prompt", "chat", "ids"] + (["none"] if is_broken else [])))
    roles = absurd_texts if is_broken else st.sampled_from(["user", "system", "assistant"])
    match kind:
        case "prompt":
            message.prompt = draw(absurd_texts if is_broken else valid_texts)
        case "chat":
            message.chat.SetInParent()
            turns = draw(st.lists(st.tuples(roles, valid_texts), min_size=0 if is_broken else 1, max_size=3))
            for role, content in turns:
                message.chat.messages.add(role=role, content=content)
            if draw(st.booleans()):
                message.chat.add_generation_prompt = draw(st.booleans())
        case "ids":
            message.prompt_token_ids.SetInParent()
            ids = absurd_token_ids if is_broken else st.lists(st.integers(0, 500), min_size=1, max_size=8)
            message.prompt_token_ids.ids.extend(draw(ids))


def _set_stopping(stopping, pick) -> None:
    max_new = pick("max_new_tokens", st.integers(1, 8), absurd_ints)
    stopping.max_new_tokens = max_new
    stopping.min_new_tokens = pick("min_new_tokens", st.integers(0, min(max_new, 4)), st.sampled_from([9, U32]))
    stopping.stop_sequences.extend(
        pick("stop_sequences", st.lists(valid_texts, max_size=3), st.lists(absurd_texts, min_size=1, max_size=18))
    )
    stopping.stop_token_ids.extend(
        pick("stop_token_ids", st.lists(st.integers(0, 500), max_size=3), absurd_token_ids)
    )
    stopping.ignore_eos = pick("ignore_eos", st.booleans(), st.booleans())
    stopping.include_stop_sequence = pick("include_stop_sequence", st.booleans(), st.booleans())
    seconds, nanos = pick(
        "max_generation_time",
        st.tuples(st.integers(1, 30), st.integers(0, 999_999_999)),
        st.tuples(st.sampled_from([-1, 0, 10**12, 2**62]), st.sampled_from([-1, 0, 5, 10**9])),
    )
    stopping.max_generation_time.seconds, stopping.max_generation_time.nanos = seconds, nanos


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
def wire_bytes(draw: st.DrawFn, message: generation_pb2.GenerateStreamRequest) -> bytes:
    """The message's bytes, maybe mangled: a string with invalid UTF-8, a truncation, or garbage."""
    data = message.SerializeToString()
    mangling = ["as is"] * 6 + ["bad utf-8", "bad nested utf-8", "truncated", "garbage"]
    match draw(st.sampled_from(mangling)):
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
    max_examples=400,
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
