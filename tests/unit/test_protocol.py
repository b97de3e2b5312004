"""The pipe protocol: every message survives pickling unchanged and cannot be mutated in flight."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from workers import protocol as p

MESSAGES = [
    p.Submit(
        request_id="r1",
        prompt_ids=(1, 2, 3),
        sampling=p.SamplingParams(temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.1, seed=5),
        stopping=p.StoppingParams(max_new_tokens=8, min_new_tokens=2, eos_token_ids=(0,), stop_token_ids=(9,)),
        return_logprobs=True,
        top_logprobs=2,
        priority=p.Priority.HIGH,
        deadline=123.5,
        trace_carrier={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    ),
    p.Cancel(("r1", "r2")),
    p.Shutdown(),
    p.LoadProgress(0, "loading weights", 0.5),
    p.Ready(0, p.ModelInfo("m", "/m", "GlmForCausalLM", "float32", "none", "cpu", 512, 8, 640)),
    p.StepOutput(
        deltas=(
            p.RequestDelta("r1", (5,), (p.TokenLogprob(5, -0.1, ((5, -0.1), (6, -2.3))),)),
            p.RequestDelta("r2", (), finish=p.Finish(p.FinishReason.CANCELLED, queue_time=0.01)),
        ),
        num_running=1,
        num_waiting=0,
    ),
    p.RequestFailed("r3", p.FailureReason.GPU_OUT_OF_MEMORY, "out of memory"),
    p.WorkerFailed(1, "could not load"),
    p.WorkerFailed(1, "config.json: unsupported", will_repeat=True),
    p.Ping(7),
    p.Pong(1, 7, longest_step=0.25),
    p.Withdraw(3),
    p.Withdrawn(1, ("r4", "r5")),
    p.WorkerConfig(worker_id=0, model_path="/m", model_id="m"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_and_frozen(message: object) -> None:
    assert pickle.loads(pickle.dumps(message)) == message
    field = dataclasses.fields(message)[0].name if dataclasses.fields(message) else None
    if field is not None:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(message, field, None)


def test_every_message_type_is_covered() -> None:
    kinds = {type(m) for m in MESSAGES}
    assert set(p.GatewayMessage.__args__) <= kinds
    assert set(p.WorkerMessage.__args__) <= kinds


def test_greedy_is_temperature_zero() -> None:
    assert p.SamplingParams().is_greedy
    assert not p.SamplingParams(temperature=0.5).is_greedy


@pytest.mark.parametrize(
    "build",
    [
        lambda: p.SamplingParams(temperature=-0.1),
        lambda: p.SamplingParams(top_p=0.0),
        lambda: p.SamplingParams(top_p=1.5),
        lambda: p.SamplingParams(top_k=-1),
        lambda: p.SamplingParams(repetition_penalty=0.0),
        lambda: p.StoppingParams(max_new_tokens=0),
        lambda: p.StoppingParams(max_new_tokens=4, min_new_tokens=5),
        lambda: p.StoppingParams(max_new_tokens=4, min_new_tokens=-1),
        lambda: p.Submit("r", (), p.SamplingParams(), p.StoppingParams(max_new_tokens=1)),
        lambda: p.Submit("r", (1,), p.SamplingParams(), p.StoppingParams(max_new_tokens=1), top_logprobs=-1),
    ],
)
def test_messages_refuse_values_out_of_range(build) -> None:
    """The edges name the field to the caller; a message out of range is a gateway bug, stopped at construction
    (the engine then checks only what it alone knows: its context, cache and vocabulary)."""
    with pytest.raises(ValueError):
        build()
