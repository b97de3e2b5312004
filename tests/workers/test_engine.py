"""The engine on tiny CPU checkpoints: greedy output equals `generate()` token for token under continuous
batching with chunked prefill, and every way a request can end."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.workers.factories import ARCHITECTURES, random_prompt, reference, run_to_end, tokens_of
from workers.protocol import FailureReason, FinishReason, SamplingParams

PROMPT_LENGTHS = (3, 40, 7, 23, 16, 1, 33, 9)  # several exceed the 16-token budget: chunked prefill
ARRIVAL_STEPS = (0, 0, 0, 1, 2, 4, 6, 9)  # most arrive while others decode


@pytest.mark.parametrize(
    ("architecture", "decode_mode"),
    [(architecture, "eager") for architecture in ARCHITECTURES] + [("glm", "static"), ("llama", "static")],
)
def test_greedy_equals_generate_under_continuous_batching(
    architecture, decode_mode, make_engine, reference_model, submit
):
    """Also at static decode shapes (the CUDA-graph path run eagerly): padded rows and scratch writes must not
    change a token."""
    engine = make_engine(architecture, max_batch_size=4, max_num_batched_tokens=16, decode_mode=decode_mode)
    model = reference_model(architecture)
    requests = {}
    arrivals: dict[int, list] = {}
    for i, (length, step) in enumerate(zip(PROMPT_LENGTHS, ARRIVAL_STEPS, strict=True)):
        penalty = 1.3 if i % 3 == 2 else 1.0  # the penalty's token history must survive slot reuse
        request = submit(f"r{i}", random_prompt(length, seed=i), 6 + i, SamplingParams(repetition_penalty=penalty))
        requests[request.request_id] = request
        arrivals.setdefault(step, []).append(request)
    deltas = run_to_end(engine, arrivals)
    for request_id, request in requests.items():
        expected = reference(
            model,
            request.prompt_ids,
            request.stopping.max_new_tokens,
            repetition_penalty=request.sampling.repetition_penalty,
        )
        assert tokens_of(deltas[request_id]) == expected, request_id
        assert deltas[request_id][-1].finish.reason is FinishReason.MAX_NEW_TOKENS
        assert all(delta.finish is None for delta in deltas[request_id][:-1])
    assert not engine.has_work() and engine.scheduler.num_running == 0


@pytest.mark.parametrize("stop_kind", ["eos", "stop_token"])
def test_eos_and_stop_token_end_like_generate(stop_kind, make_engine, reference_model, submit):
    engine = make_engine("llama")
    prompt = random_prompt(12, seed=5)
    unstopped = reference(reference_model("llama"), prompt, 12)
    stop_id = unstopped[4]
    if stop_kind == "eos":
        request = submit("a", prompt, 12, eos_token_ids=(stop_id,), ignore_eos=False)
        expected_reason = FinishReason.EOS_TOKEN
    else:
        request = submit("a", prompt, 12, stop_token_ids=(stop_id,))
        expected_reason = FinishReason.STOP_SEQUENCE
    deltas = run_to_end(engine, {0: [request]})["a"]
    expected = reference(reference_model("llama"), prompt, 12, eos_token_id=stop_id)
    assert tokens_of(deltas) == expected == unstopped[: unstopped.index(stop_id) + 1]
    assert deltas[-1].finish.reason is expected_reason and deltas[-1].finish.stop_token_id == stop_id


def test_context_limit(make_engine, reference_model, submit):
    engine = make_engine("qwen2", max_seq_len=20)
    prompt = random_prompt(15, seed=3)
    deltas = run_to_end(engine, {0: [submit("a", prompt, 50)]})["a"]
    assert tokens_of(deltas) == reference(reference_model("qwen2"), prompt, 5)
    assert deltas[-1].finish.reason is FinishReason.CONTEXT_LIMIT
    finish = deltas[-1].finish
    assert finish.queue_time >= 0 and finish.prefill_time >= 0 and finish.decode_time > 0


def test_cancel_mid_decode_frees_the_slot_for_a_waiting_request(make_engine, reference_model, submit):
    engine = make_engine("glm", max_batch_size=1)
    prompt = random_prompt(9, seed=2)
    engine.add(submit("long", random_prompt(5, seed=1), 100))
    engine.add(submit("next", prompt, 6))
    for _ in range(3):
        output = engine.step()
        assert [delta.request_id for delta in output.deltas] == ["long"]  # "next" waits for the only slot
    engine.cancel(["long", "no-such-request"])
    output = engine.step()
    by_id = {delta.request_id: delta for delta in output.deltas}
    assert by_id["long"].token_ids == () and by_id["long"].finish.reason is FinishReason.CANCELLED
    assert engine.scheduler.requests["next"].slot == 0  # admitted in the same step
    next_tokens = list(by_id["next"].token_ids) + tokens_of(run_to_end(engine)["next"])
    assert next_tokens == reference(reference_model("glm"), prompt, 6)


def test_failures_are_per_request(make_engine, submit, monkeypatch):
    engine = make_engine("glm")
    engine.add(submit("a", random_prompt(5, seed=1), 4))
    engine.add(submit("a", random_prompt(5, seed=1), 4))
    engine.add(submit("too-long", random_prompt(600, seed=1), 4))
    engine.add(submit("bad-id", (1, 2, 10_000), 4))
    engine.add(submit("bad-stop-id", (1, 2), 4, stop_token_ids=(10_000,)))
    engine.add(dataclasses.replace(submit("bad-top", (1, 2), 4), return_logprobs=True, top_logprobs=100_000))
    failures = {failure.request_id: failure.reason for failure in engine.pop_failures()}
    assert failures == {
        "a": FailureReason.DUPLICATE_REQUEST_ID,
        "too-long": FailureReason.PROMPT_TOO_LONG,
        "bad-id": FailureReason.INVALID_PARAMETER,
        "bad-stop-id": FailureReason.INVALID_PARAMETER,
        "bad-top": FailureReason.INVALID_PARAMETER,
    }
    real_prefill = engine.runner.prefill

    def prefill_or_oom(chunks):
        if any(chunk.seq.request_id == "oom" for chunk in chunks):
            raise torch.OutOfMemoryError("simulated")
        return real_prefill(chunks)

    monkeypatch.setattr(engine.runner, "prefill", prefill_or_oom)
    engine.add(submit("oom", random_prompt(5, seed=2), 4))
    deltas = run_to_end(engine)
    assert [(f.request_id, f.reason) for f in engine.pop_failures()] == [("oom", FailureReason.GPU_OUT_OF_MEMORY)]
    assert "oom" not in deltas and len(tokens_of(deltas["a"])) == 4
    assert engine.scheduler.num_running == 0


def test_logprobs_and_seeded_sampling(make_engine, reference_model, submit):
    engine = make_engine("llama")
    prompt = random_prompt(6, seed=4)
    request = dataclasses.replace(submit("lp", prompt, 1), return_logprobs=True, top_logprobs=3)
    delta = run_to_end(engine, {0: [request]})["lp"][0]
    with torch.no_grad():
        logits = reference_model("llama")(torch.tensor([prompt])).logits[0, -1]
    expected = torch.log_softmax(logits, dim=-1)
    (logprob,) = delta.logprobs
    assert logprob.token_id == delta.token_ids[0] == logprob.top[0][0]
    assert logprob.logprob == pytest.approx(expected.max().item(), abs=1e-4)
    assert [token for token, _ in logprob.top] == expected.topk(3).indices.tolist()

    sampling = SamplingParams(temperature=0.8, top_p=0.95, seed=77)
    alone = tokens_of(run_to_end(engine, {0: [submit("s", prompt, 8, sampling)]})["s"])
    crowd = [
        submit(f"other{i}", random_prompt(4 + i, seed=i), 8, SamplingParams(temperature=1.0, seed=i))
        for i in range(3)
    ]
    together = run_to_end(engine, {0: [crowd[0], submit("s", prompt, 8, sampling), *crowd[1:]]})
    assert tokens_of(together["s"]) == alone
    other_seed = SamplingParams(temperature=0.8, top_p=0.95, seed=78)
    assert tokens_of(run_to_end(engine, {0: [submit("s", prompt, 8, other_seed)]})["s"]) != alone


def test_transformers_builds_no_mask_for_the_engine_attention(make_engine, submit):
    from transformers import AttentionInterface

    from workers.kv.attention import ATTENTION_NAME, paged_attention

    engine = make_engine("qwen2")
    masks = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return paged_attention(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(ATTENTION_NAME, spy)
    try:
        run_to_end(engine, {0: [submit("a", random_prompt(20, seed=1), 3)]})
    finally:
        AttentionInterface.register(ATTENTION_NAME, paged_attention)
    assert masks and all(mask is None for mask in masks)


def test_prompt_chunks_of_one_step_share_a_padded_forward(make_engine, reference_model, submit, monkeypatch):
    """A continuing chunk (7 tokens from position 16) and a new prompt (9 tokens) run as one forward, the shorter
    row padded; the padding's K/V must land where no query looks, or the continuing request's output changes."""
    from workers.engine import runner

    groups, group_chunks = [], runner.group_chunks

    def recording_group_chunks(chunks):
        result = group_chunks(chunks)
        groups.extend([(chunk.start, len(chunk.token_ids)) for chunk in group] for group in result)
        return result

    monkeypatch.setattr(runner, "group_chunks", recording_group_chunks)
    engine = make_engine("glm", max_batch_size=4, max_num_batched_tokens=16)
    first, second = submit("first", random_prompt(23, seed=21), 5), submit("second", random_prompt(9, seed=22), 5)
    deltas = run_to_end(engine, {0: [first], 1: [second]})
    assert [(0, 9), (16, 7)] in groups
    for request in (first, second):
        expected = reference(reference_model("glm"), request.prompt_ids, 5)
        assert tokens_of(deltas[request.request_id]) == expected, request.request_id


def test_chunks_are_grouped_longest_first_with_bounded_padding():
    from types import SimpleNamespace

    from workers.engine.runner import group_chunks

    chunks = [SimpleNamespace(token_ids=(0,) * n) for n in (3, 100, 90, 8, 97, 10)]
    groups = [[len(chunk.token_ids) for chunk in group] for group in group_chunks(chunks)]
    assert groups == [[100, 97, 90], [10, 8], [3]]
    assert group_chunks([]) == []


def test_the_warm_up_runs_a_full_step_and_times_every_step(make_engine, submit, monkeypatch):
    """The warm-up's prompt fills one step's token budget, so the longest prefill step is timed before the worker
    is ready (the gateway's watchdog sizes its timeout from it); its tokens are not counted as served."""
    from workers.engine.scheduler import Scheduler

    schedule, prefilled = Scheduler.schedule, []

    def recording(scheduler, now):
        batch = schedule(scheduler, now)
        prefilled.append(sum(len(chunk.token_ids) for chunk in batch.prefills))
        return batch

    monkeypatch.setattr(Scheduler, "schedule", recording)
    engine = make_engine(max_num_batched_tokens=16)
    assert prefilled[0] == 16  # the whole budget in the warm-up's first step
    warmed = engine.longest_step
    assert warmed > 0 and engine.scheduler.stats.num_prompt_tokens == 0
    engine.add(submit("r", (3, 4, 5), max_new_tokens=2))
    while engine.has_work():
        output = engine.step()
    assert output.longest_step == engine.longest_step >= warmed
    assert engine.scheduler.stats.num_prompt_tokens == 3
