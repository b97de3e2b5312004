"""The protobuf edge: field validation names the field; the wire check sees two `input`s."""

from __future__ import annotations

import pytest

from autoglm.v1 import generation_pb2
from autoglm_rpc.core.errors import InvalidParameter
from autoglm_rpc.core.requests import ChatPrompt, RequestLimits, TokenPrompt
from autoglm_rpc.grpc_api import convert
from workers.protocol import Priority


def test_a_full_request_converts() -> None:
    message = generation_pb2.GenerateStreamRequest(
        request_id="r1", chat={"messages": [{"role": "user", "content": "hi"}]}, priority=3
    )
    message.sampling.temperature = 0.5
    message.sampling.seed = 3
    message.sampling.frequency_penalty = 0.25
    message.sampling.presence_penalty = -2.0
    message.stopping.max_new_tokens = 9
    message.stopping.stop_sequences.append("###")
    message.stopping.max_generation_time.FromMilliseconds(1500)
    message.stream_options.min_tokens_per_message = 4
    request = convert.generation_request(message)
    assert request.prompt == ChatPrompt((convert.ChatMessage("user", "hi"),), add_generation_prompt=True)
    assert (request.sampling.temperature, request.sampling.seed, request.sampling.top_p) == (0.5, 3, None)
    assert (request.sampling.frequency_penalty, request.sampling.presence_penalty) == (0.25, -2.0)
    assert (request.stopping.max_new_tokens, request.stopping.stop_sequences) == (9, ("###",))
    assert request.stopping.max_generation_time == 1.5
    assert (request.priority, request.min_tokens_per_message) == (Priority.HIGH, 4)
    assert request.output.skip_special_tokens is True


def test_token_prompt_and_unset_fields() -> None:
    request = convert.generation_request(generation_pb2.GenerateRequest(prompt_token_ids={"ids": [4, 5]}))
    assert request.prompt == TokenPrompt((4, 5))
    assert request.stopping.max_new_tokens is None
    assert request.priority == Priority.NORMAL
    assert request.sampling.frequency_penalty is None and request.sampling.presence_penalty is None


@pytest.mark.parametrize(
    ("setup", "field"),
    [
        (lambda m: setattr(m.sampling, "top_k", 2_000_000), "sampling.top_k"),
        (lambda m: setattr(m.sampling, "seed", 2**63), "sampling.seed"),
        (lambda m: setattr(m.sampling, "frequency_penalty", 2.5), "sampling.frequency_penalty"),
        (lambda m: setattr(m.sampling, "presence_penalty", -3), "sampling.presence_penalty"),
        (lambda m: setattr(m.sampling, "frequency_penalty", float("nan")), "sampling.frequency_penalty"),
        (lambda m: setattr(m.stopping, "min_new_tokens", 5) or setattr(m.stopping, "max_new_tokens", 2),
         "stopping.min_new_tokens"),
        (lambda m: m.stopping.stop_sequences.append(""), "stopping.stop_sequences[0]"),
        (lambda m: m.stopping.max_generation_time.FromSeconds(-1), "stopping.max_generation_time"),
        (lambda m: setattr(m.output, "top_logprobs", 3), "output.top_logprobs"),
        (lambda m: m.chat.messages.add(role="", content="x"), "chat.messages[0].role"),
        (lambda m: setattr(m, "request_id", "naïve"), "request_id"),
    ],
)  # fmt: skip
def test_invalid_fields_are_named(setup, field: str) -> None:
    message = generation_pb2.GenerateRequest(prompt="hello")
    setup(message)
    with pytest.raises(InvalidParameter) as caught:
        convert.generation_request(message)
    assert caught.value.field == field
    assert str(caught.value).startswith(field)


def test_configured_limits_apply() -> None:
    message = generation_pb2.GenerateRequest(prompt="hello")
    message.stopping.stop_sequences.extend(["ab", "cd", "ef"])
    message.output.return_logprobs = True
    message.output.top_logprobs = 5
    assert convert.generation_request(message).stopping.stop_sequences == ("ab", "cd", "ef")
    for limits, field in [
        (RequestLimits(max_stop_sequences=2), "stopping.stop_sequences"),
        (RequestLimits(max_stop_sequence_chars=1), "stopping.stop_sequences[0]"),
        (RequestLimits(max_top_logprobs=4), "output.top_logprobs"),
    ]:
        with pytest.raises(InvalidParameter) as caught:
            convert.generation_request(message, limits=limits)
        assert caught.value.field == field


@pytest.mark.parametrize(
    ("seconds", "nanos", "problem"),
    [(0, 0, "must be positive"), (-1, 0, "must be positive"), (1, -1, "not a valid Duration"),
     (10**12, 0, "not a valid Duration")],
)  # fmt: skip
def test_max_generation_time_must_be_a_valid_positive_duration(seconds: int, nanos: int, problem: str) -> None:
    message = generation_pb2.GenerateRequest(prompt="hello")
    message.stopping.max_generation_time.seconds = seconds
    message.stopping.max_generation_time.nanos = nanos
    with pytest.raises(InvalidParameter, match=problem):
        convert.generation_request(message)
