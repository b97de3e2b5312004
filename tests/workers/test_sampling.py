"""Batched sampling against transformers' own logits processors, and seeded reproducibility; no model."""

from __future__ import annotations

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor, TopKLogitsWarper, TopPLogitsWarper

from workers.engine.sampling import (
    SamplingRow,
    SamplingTensors,
    apply_repetition_penalty,
    apply_top_k_top_p,
    compute_logprobs,
    mix32,
    sample,
)
from workers.protocol import SamplingParams

CPU = torch.device("cpu")
VOCAB = 97


def random_logits(num_rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(num_rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def tensors_for(*rows: SamplingRow) -> SamplingTensors:
    return SamplingTensors.from_rows(rows, CPU)


def row(output_position: int = 0, masked: tuple[int, ...] = (), **params) -> SamplingRow:
    return SamplingRow(SamplingParams(**params), output_position, masked)


def test_greedy_is_argmax() -> None:
    logits = random_logits(5)
    tokens = sample(logits, tensors_for(*[row()] * 5))
    assert torch.equal(tokens, logits.argmax(dim=-1))


def test_top_k_one_is_greedy_whatever_the_temperature_and_seed() -> None:
    logits = random_logits(6)
    rows = [row(position, temperature=2.0, top_k=1, seed=position) for position in range(6)]
    assert torch.equal(sample(logits, tensors_for(*rows)), logits.argmax(dim=-1))


def test_repetition_penalty_matches_transformers() -> None:
    logits = random_logits(3)
    input_ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1))
    seen = torch.zeros(3, VOCAB, dtype=torch.bool).scatter_(1, input_ids, True)
    for penalty in (0.7, 1.3, 2.0):
        expected = RepetitionPenaltyLogitsProcessor(penalty)(input_ids, logits.clone())
        actual = apply_repetition_penalty(logits, seen, torch.full((3,), penalty))
        assert torch.equal(actual, expected)


@pytest.mark.parametrize(("top_k", "top_p"), [(5, 1.0), (0, 0.6), (10, 0.8), (1, 0.5), (0, 1.0), (200, 0.95)])
def test_top_k_top_p_match_transformers_warpers(top_k: int, top_p: float) -> None:
    logits = random_logits(4, seed=top_k)
    expected = logits.clone()
    if top_k > 0:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(None, expected)
    actual = apply_top_k_top_p(logits, torch.full((4,), top_k), torch.full((4,), top_p))
    assert torch.equal(torch.isinf(actual), torch.isinf(expected))
    assert torch.equal(actual[~torch.isinf(actual)], expected[~torch.isinf(expected)])


def test_top_k_top_p_are_per_row() -> None:
    logits = random_logits(3)
    actual = apply_top_k_top_p(logits, torch.tensor([0, 3, 7]), torch.tensor([0.5, 1.0, 0.9]))
    assert torch.equal(actual[0], TopPLogitsWarper(0.5)(None, logits[:1].clone())[0])
    assert torch.equal(actual[1], TopKLogitsWarper(3)(None, logits[1:2].clone())[0])
    both = TopPLogitsWarper(0.9)(None, TopKLogitsWarper(7)(None, logits[2:].clone()))
    assert torch.equal(actual[2], both[0])


def test_same_seed_same_token_whatever_the_batch() -> None:
    logits = random_logits(1).expand(8, VOCAB).clone()
    target = row(3, temperature=1.0, top_p=0.9, seed=1234)
    alone = sample(logits[:1], tensors_for(target))
    others = [row(p, temperature=0.5 + p, top_k=p, seed=p) for p in range(6)]
    for index in (0, 3, 6):
        rows = [*others[:index], target, *others[index:]]
        assert sample(logits[: len(rows)], tensors_for(*rows))[index] == alone[0]


def test_seeded_sequences_are_reproducible_and_seeds_differ() -> None:
    uniform = torch.zeros(1, VOCAB)

    def draw(seed: int) -> list[int]:
        return [int(sample(uniform, tensors_for(row(p, temperature=1.0, seed=seed)))[0]) for p in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    assert draw(2**62 + 7) != draw(7)  # the high 32 bits of the seed count too


def test_draws_follow_the_softmax() -> None:
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]])).expand(4000, 4).contiguous()
    rows = [row(p, temperature=1.0, seed=99) for p in range(4000)]
    counts = torch.bincount(sample(logits, tensors_for(*rows)), minlength=4).float() / 4000
    assert torch.allclose(counts, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.03)


def test_min_new_tokens_masks_eos_and_stop_ids() -> None:
    logits = torch.zeros(2, VOCAB)
    logits[:, 0] = 100.0  # EOS would always win
    logits[:, 5] = 90.0  # then a stop id
    rows = [row(0, masked=(0, 5)), row(0, masked=(0, 5), temperature=1.0, seed=3)]
    tokens = sample(logits, tensors_for(*rows))
    assert 0 not in tokens.tolist() and 5 not in tokens.tolist()
    assert tokens[0] == logits[0, 1:5].argmax() + 1 or tokens[0] > 5


def test_logprobs_are_of_the_raw_distribution() -> None:
    logits = random_logits(2)
    tokens = torch.tensor([3, 4])
    chosen, top_values, top_ids = compute_logprobs(logits, tokens, 3)
    expected = torch.log_softmax(logits, dim=-1)
    assert torch.allclose(chosen, expected[[0, 1], [3, 4]])
    assert torch.equal(top_ids, expected.topk(3).indices)
    assert torch.all(top_values[:, :-1] >= top_values[:, 1:])


def test_hash_matches_on_ints_and_tensors() -> None:
    values = [0, 1, 2**31 + 5, 2**32 - 1]
    assert mix32(torch.tensor(values)).tolist() == [mix32(v) for v in values]
    assert all(0 <= mix32(v) < 2**32 for v in values)
