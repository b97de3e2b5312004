"""Bad requests get the contract's status code and reason, name the field, and the server keeps serving."""

from __future__ import annotations

import grpc
import pytest

from autoglm.v1 import generation_pb2
from autoglm_rpc.client import AutoglmError, Client, error_from_rpc
from tests.support import ServerThread

INVALID = grpc.StatusCode.INVALID_ARGUMENT

CASES = [
    # (id, request fields, code, reason, text the message must contain)
    ("empty prompt", {"prompt": ""}, INVALID, "INVALID_PARAMETER", "prompt"),
    ("no input", {}, INVALID, "INVALID_PARAMETER", "input"),
    ("empty token ids", {"token_ids": []}, INVALID, "INVALID_PARAMETER", "prompt_token_ids"),
    ("token id outside vocab", {"token_ids": [10**6]}, INVALID, "INVALID_PARAMETER", "vocabulary"),
    ("empty chat", {"chat": []}, INVALID, "INVALID_PARAMETER", "chat.messages"),
    ("negative temperature", {"prompt": "hi", "sampling": {"temperature": -1}}, INVALID, "INVALID_PARAMETER",
     "sampling.temperature"),
    ("top_p zero", {"prompt": "hi", "sampling": {"top_p": 0}}, INVALID, "INVALID_PARAMETER", "sampling.top_p"),
    ("top_p above one", {"prompt": "hi", "sampling": {"top_p": 1.5}}, INVALID, "INVALID_PARAMETER",
     "sampling.top_p"),
    ("nan temperature", {"prompt": "hi", "sampling": {"temperature": float("nan")}}, INVALID,
     "INVALID_PARAMETER", "sampling.temperature"),
    ("penalty zero", {"prompt": "hi", "sampling": {"repetition_penalty": 0}}, INVALID, "INVALID_PARAMETER",
     "sampling.repetition_penalty"),
    ("frequency penalty above two", {"prompt": "hi", "sampling": {"frequency_penalty": 2.5}}, INVALID,
     "INVALID_PARAMETER", "sampling.frequency_penalty"),
    ("presence penalty below minus two", {"prompt": "hi", "sampling": {"presence_penalty": -2.5}}, INVALID,
     "INVALID_PARAMETER", "sampling.presence_penalty"),
    ("max_new_tokens zero", {"prompt": "hi", "stopping": {"max_new_tokens": 0}}, INVALID, "INVALID_PARAMETER",
     "stopping.max_new_tokens"),
    ("too many stops", {"prompt": "hi", "stopping": {"stop_sequences": ["x"] * 17}}, INVALID,
     "INVALID_PARAMETER", "stopping.stop_sequences"),
    ("top_logprobs too high", {"prompt": "hi", "output": {"return_logprobs": True, "top_logprobs": 50}},
     INVALID, "INVALID_PARAMETER", "output.top_logprobs"),
    ("unknown priority", {"prompt": "hi", "priority": 42}, INVALID, "INVALID_PARAMETER", "priority"),
    ("bad request id", {"prompt": "hi", "request_id": "x" * 200}, INVALID, "INVALID_PARAMETER", "request_id"),
    ("prompt over context", {"token_ids": [5] * 600}, INVALID, "PROMPT_TOO_LONG", "context"),
    ("long text over context", {"prompt": "hello world " * 1000}, INVALID, "PROMPT_TOO_LONG", "context"),
    ("prompt plus output over context", {"prompt": "hi", "stopping": {"max_new_tokens": 100_000}}, INVALID,
     "PROMPT_TOO_LONG", "max_new_tokens"),
    ("unknown model", {"prompt": "hi", "model": "gpt-17"}, grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND",
     "gpt-17"),
    ("model name too long", {"prompt": "hi", "model": "m" * 300}, INVALID, "INVALID_PARAMETER", "model"),
    ("role too long", {"chat": [("r" * 65, "hi")]}, INVALID, "INVALID_PARAMETER", "chat.messages[0].role"),
    ("stop sequence too long", {"prompt": "hi", "stop": ["s" * 257]}, INVALID, "INVALID_PARAMETER",
     "stopping.stop_sequences[0]"),
    ("invalid duration", {"prompt": "hi", "stopping": {"max_generation_time": {"seconds": 1, "nanos": -5}}},
     INVALID, "INVALID_PARAMETER", "stopping.max_generation_time"),
    ("huge token id", {"token_ids": [2**32 - 1]}, INVALID, "INVALID_PARAMETER", "vocabulary"),
    ("stop token id outside vocab", {"prompt": "hi", "stopping": {"stop_token_ids": [10**6]}}, INVALID,
     "INVALID_PARAMETER", "stopping.stop_token_ids"),
    ("chat over the character limit", {"chat": [("user", "x" * 9000)]}, INVALID, "PROMPT_TOO_LONG", "characters"),
]  # fmt: skip


def _expect_error(call, code: grpc.StatusCode, reason: str, text: str) -> AutoglmError:
    with pytest.raises(AutoglmError) as caught:
        call()
    error = caught.value
    assert (error.code, error.reason) == (code, reason), error
    assert text in error.message
    return error


@pytest.mark.parametrize(("fields", "code", "reason", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_gets_its_status(glm_server: ServerThread, fields: dict, code, reason: str, text: str) -> None:
    with glm_server.client() as client:
        _expect_error(lambda: client.generate(**fields), code, reason, text)
        # The stream gets the same status and no message at all.
        messages: list[object] = []

        def stream() -> None:
            messages.extend(client.stream(**fields))

        _expect_error(stream, code, reason, text)
        assert messages == []


def test_two_inputs_are_refused(glm_server: ServerThread) -> None:
    """Protobuf keeps only the last member of a oneof, so two inputs are built on the wire by hand."""
    wire = (
        generation_pb2.GenerateRequest(prompt="hello").SerializeToString()
        + generation_pb2.GenerateRequest(prompt_token_ids={"ids": [1, 2]}).SerializeToString()
    )
    with glm_server.channel() as channel:
        call = channel.unary_unary(
            "/autoglm.v1.GenerationService/Generate",
            request_serializer=lambda data: data,
            response_deserializer=generation_pb2.GenerateResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(wire, timeout=30)
    error = error_from_rpc(caught.value)
    assert (error.code, error.reason) == (INVALID, "INVALID_PARAMETER")
    assert "input" in error.message


MALFORMED = [
    # (method, bytes, what the message must say)
    ("/autoglm.v1.GenerationService/Generate", b"\x1a\x02\xff\xfe", "UTF-8"),  # prompt: invalid UTF-8
    ("/autoglm.v1.GenerationService/Generate", b"\x0a\x05ab", "autoglm.v1.GenerateRequest"),  # truncated
    ("/autoglm.v1.GenerationService/Tokenize", b"\x12\x01\x80", "UTF-8"),  # text: invalid UTF-8
    ("/autoglm.v1.GenerationService/CancelGeneration", b"\xff\xff\xff", "autoglm.v1.CancelGenerationRequest"),
    ("/autoglm.v1.ModelService/ListModels", b"\x0f", "autoglm.v1.ListModelsRequest"),  # wire type 7
    ("/grpc.health.v1.Health/Check", b"\x0a\x01\xc0", "UTF-8"),  # service: invalid UTF-8
]


@pytest.mark.parametrize(("method", "data", "text"), MALFORMED, ids=[f"{m[0].split('/')[-1]}-{i}" for i, m in
                                                                     enumerate(MALFORMED)])  # fmt: skip
def test_malformed_bytes_are_invalid_argument(
    glm_server: ServerThread, method: str, data: bytes, text: str
) -> None:
    """Bytes that do not parse end INVALID_ARGUMENT naming the problem (grpc alone would say UNKNOWN)."""
    with glm_server.channel() as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)(data, timeout=30)
        error = error_from_rpc(caught.value)
        assert (error.code, error.reason) == (INVALID, "INVALID_PARAMETER"), error
        assert error.message.startswith("request: ") and text in error.message
        stream = channel.unary_stream(
            "/autoglm.v1.GenerationService/GenerateStream", request_serializer=bytes, response_deserializer=bytes
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(stream(b"\x1a\x01\xff", timeout=30))
        assert caught.value.code() == INVALID


def test_chat_without_template_is_failed_precondition(llama_server: ServerThread) -> None:
    with llama_server.client() as client:
        _expect_error(
            lambda: client.generate(chat=[("user", "hi")]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "CHAT_TEMPLATE_MISSING",
            "chat template",
        )
        # ... and the server keeps serving.
        assert client.generate("hi", max_new_tokens=3).usage.completion_tokens > 0


def test_duplicate_in_flight_request_id(glm_server: ServerThread) -> None:
    with glm_server.client() as client:
        stream = client.stream("Hello", request_id="dup-1", max_new_tokens=400, stopping={"ignore_eos": True})
        assert next(stream).request_id == "dup-1"
        _expect_error(
            lambda: client.generate("Hello", request_id="dup-1"),
            grpc.StatusCode.ALREADY_EXISTS,
            "DUPLICATE_REQUEST_ID",
            "dup-1",
        )
        stream.close()


def test_server_keeps_serving_after_bad_input(glm_server: ServerThread) -> None:
    with Client(glm_server.target) as client:
        for fields in ({"prompt": ""}, {"prompt": "x", "sampling": {"top_p": 9}}):
            with pytest.raises(AutoglmError):
                client.generate(**fields)
        assert client.generate("Hello", max_new_tokens=4).usage.completion_tokens > 0
