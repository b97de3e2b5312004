"""Frequency and presence penalties through the engine with a real tiny model: greedy output equals transformers'
`generate()` with the same penalties as a logits processor, token for token, in a mixed batch and across
preemptions (the counts are rebuilt from the request's output ids when it is recomputed)."""

from __future__ import annotations

from tests.workers.factories import random_prompt, reference, reference_with_penalties, run_to_end, tokens_of
from workers.protocol import SamplingParams

# The tiny model seldom repeats a token within 20 (its logits are flat over 640 ids), so a positive penalty changes
# little there; negative ones (rewarding repeats) change most tokens, and they share the code path.
PENALTIES = [
    SamplingParams(frequency_penalty=0.2),  # Open-AutoGLM's phone agent: temperature 0, frequency_penalty 0.2
    SamplingParams(presence_penalty=-1.0),
    SamplingParams(repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=-0.3),
    SamplingParams(),
    SamplingParams(frequency_penalty=-0.1),
    SamplingParams(frequency_penalty=2.0, presence_penalty=2.0),
]


def test_a_mixed_batch_of_penalties_equals_generate(make_engine, reference_model, submit) -> None:
    engine = make_engine("glm", max_batch_size=8, max_num_batched_tokens=64)
    model = reference_model("glm")
    requests = [
        submit(f"r{i}", random_prompt(6 + 3 * i, seed=60 + i), 20, sampling)
        for i, sampling in enumerate(PENALTIES)
    ]
    deltas = run_to_end(engine, {0: requests[:3], 3: requests[3:]})
    changed = 0
    for request in requests:
        expected = reference_with_penalties(model, request.prompt_ids, 20, request.sampling)
        assert tokens_of(deltas[request.request_id]) == expected, request.request_id
        changed += expected != reference(model, request.prompt_ids, 20)
    assert changed >= 3, "the penalties should change the greedy tokens of the tiny model"


def test_preempted_requests_keep_their_counts(make_engine, reference_model, submit) -> None:
    """96 tokens of cache for requests that need 150 together: they are preempted and recomputed."""
    engine = make_engine("glm", kv_cache_tokens=96, max_num_batched_tokens=32)
    model = reference_model("glm")
    # The scheduler preempts p3, then p2 (after 2 and 7 output tokens): the strongest penalties are theirs.
    samplings = [PENALTIES[3], PENALTIES[2], PENALTIES[1], PENALTIES[5]]
    requests = [
        submit(f"p{i}", random_prompt(length, seed=30 + i), 24, sampling)
        for i, (length, sampling) in enumerate(zip((20, 9, 30, 14), samplings, strict=True))
    ]
    deltas = run_to_end(engine, {0: requests[:3], 2: requests[3:]}, max_steps=1000)
    assert engine.scheduler.stats.num_preemptions > 0
    changed = 0
    for request in requests:
        expected = reference_with_penalties(model, request.prompt_ids, 24, request.sampling)
        assert tokens_of(deltas[request.request_id]) == expected, request.request_id
        changed += expected != reference(model, request.prompt_ids, 24)
    assert changed == 3
