"""The paged cache with a real model: prefix hits and preemptions change no token of greedy output, which equals
transformers' `generate()`."""

from __future__ import annotations

import pytest

from tests.workers.factories import random_prompt, reference, run_to_end, tokens_of
from workers.protocol import SamplingParams

SHARED = random_prompt(40, seed=77)  # 2 full blocks of 16, then a partial one


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_requests_sharing_a_prefix_equal_generate_with_and_without_the_cache(
    prefix_caching, make_engine, reference_model, submit
):
    engine = make_engine("glm", enable_prefix_caching=prefix_caching)
    model = reference_model("glm")
    warm_up_tokens = engine.scheduler.stats.num_prompt_tokens
    first = submit("first", (*SHARED, 5, 6, 7), 6)
    later = [
        submit("tail", (*SHARED, *random_prompt(9, seed=1)), 7),
        submit("penalty", (*SHARED, *random_prompt(3, seed=2)), 8, SamplingParams(repetition_penalty=1.3)),
        submit("same", first.prompt_ids, 6),  # every full block cached: the last one is still computed
        submit("exact", SHARED[:32], 5),  # block-aligned: its second block is recomputed, not written in place
    ]
    deltas = run_to_end(engine, {0: [first], 12: later})
    for request in (first, *later):
        expected = reference(
            model,
            request.prompt_ids,
            request.stopping.max_new_tokens,
            repetition_penalty=request.sampling.repetition_penalty,
        )
        assert tokens_of(deltas[request.request_id]) == expected, request.request_id
    stats = engine.scheduler.stats
    assert stats.num_prompt_tokens - warm_up_tokens == 43 + 49 + 43 + 43 + 32
    # 32 tokens each for tail, penalty and same (the prefix's full blocks), 16 for exact (its last block is
    # computed); more when first's output filled a third block.
    assert stats.num_cached_tokens >= (3 * 32 + 16 if prefix_caching else 0)
    if not prefix_caching:
        assert stats.num_cached_tokens == 0


@pytest.mark.parametrize("decode_mode", ["eager", "static"])
def test_preempted_requests_resume_with_the_tokens_generate_gives(
    decode_mode, make_engine, reference_model, submit
):
    """96 tokens of cache for requests that need 150 together: they are preempted and recomputed."""
    engine = make_engine("glm", kv_cache_tokens=96, decode_mode=decode_mode, max_num_batched_tokens=32)
    model = reference_model("glm")
    requests = [
        submit(f"p{i}", random_prompt(length, seed=30 + i), 24, SamplingParams(repetition_penalty=penalty))
        for i, (length, penalty) in enumerate(((20, 1.0), (9, 1.3), (30, 1.0), (14, 1.0)))
    ]
    deltas = run_to_end(engine, {0: requests[:3], 2: requests[3:]}, max_steps=1000)
    assert engine.scheduler.stats.num_preemptions > 0
    for request in requests:
        expected = reference(model, request.prompt_ids, 24, repetition_penalty=request.sampling.repetition_penalty)
        assert tokens_of(deltas[request.request_id]) == expected, request.request_id
    assert engine.scheduler.pool.num_used == 0


def test_many_short_requests_run_together_in_a_cache_that_holds_one_full_context(
    make_engine, reference_model, submit
):
    """256 tokens of cache and a 256-token context: a slotted cache would run one request at a time."""
    engine = make_engine(
        "llama", kv_cache_tokens=256, max_seq_len=256, max_batch_size=16, max_num_batched_tokens=128
    )
    assert engine.scheduler.max_seq_len == 256
    requests = [submit(f"s{i}", random_prompt(6, seed=50 + i), 8) for i in range(16)]
    for request in requests:
        engine.add(request)
    deltas = {request.request_id: [] for request in requests}
    output = engine.step()
    assert (output.num_running, output.num_waiting, output.kv_blocks_used) == (16, 0, 16)  # one block each
    for delta in output.deltas:
        deltas[delta.request_id].append(delta)
    for request_id, more in run_to_end(engine).items():
        deltas[request_id].extend(more)
    model = reference_model("llama")
    for request in requests[:4]:
        assert tokens_of(deltas[request.request_id]) == reference(model, request.prompt_ids, 8)
    assert all(len(tokens_of(deltas[request.request_id])) == 8 for request in requests)
    assert engine.scheduler.stats.num_preemptions == 0
