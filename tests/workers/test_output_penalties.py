"""OpenAI's frequency and presence penalties in batched sampling, and the per-row counts of generated tokens they
read; no model. Checked against a plain per-token reference, and with transformers' repetition penalty beside
them against `RepetitionPenaltyLogitsProcessor` followed by that reference."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from workers.engine.output_counts import OutputTokenCounts
from workers.engine.sampling import SamplingRow, SamplingTensors, process_logits, sample
from workers.protocol import SamplingParams

CPU = torch.device("cpu")
VOCAB = 61


def reference_penalties(
    logits: torch.Tensor, output_ids: list[list[int]], frequency: list[float], presence: list[float]
) -> torch.Tensor:
    """OpenAI's definition, token by token: logit -= frequency * count + presence * (count > 0)."""
    penalized = logits.clone()
    for row, ids in enumerate(output_ids):
        for token_id, count in Counter(ids).items():
            penalized[row, token_id] -= frequency[row] * count + presence[row]
    return penalized


def counts_of(output_ids: list[list[int]]) -> torch.Tensor:
    """[N, VOCAB] float32 counts, built through `OutputTokenCounts` as the runner builds them."""
    counts = OutputTokenCounts(len(output_ids), VOCAB, CPU)
    counts.start(range(len(output_ids)), output_ids)
    return counts.rows(torch.arange(len(output_ids)))


def random_case(num_rows: int, seed: int) -> tuple[torch.Tensor, list[list[int]], list[list[int]]]:
    """Logits, and each row's prompt and output ids (with repeats, and some prompt tokens not in the output)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, VOCAB, generator=generator) * 3
    prompts = [torch.randint(0, VOCAB, (12,), generator=generator).tolist() for _ in range(num_rows)]
    outputs = [
        torch.randint(0, VOCAB // 3, (5 + 4 * row,), generator=generator).tolist() for row in range(num_rows)
    ]
    return logits, prompts, outputs


def tensors_for(*params: SamplingParams) -> SamplingTensors:
    return SamplingTensors.from_rows([SamplingRow(p, 0) for p in params], CPU)


def seen_of(prompts: list[list[int]], outputs: list[list[int]]) -> torch.Tensor:
    seen = torch.zeros(len(prompts), VOCAB, dtype=torch.bool)
    for row, ids in enumerate(prompts):
        seen[row, ids + outputs[row]] = True
    return seen


def test_counts_are_those_of_the_output_ids() -> None:
    outputs = [[3, 3, 3, 7], [], [0, 60, 0]]
    counts = counts_of(outputs)
    expected = torch.zeros(3, VOCAB)
    for row, ids in enumerate(outputs):
        for token_id, count in Counter(ids).items():
            expected[row, token_id] = count
    assert torch.equal(counts, expected)


@pytest.mark.parametrize(("frequency", "presence"), [(0.2, 0.0), (0.0, 0.7), (1.5, -0.5), (-2.0, 2.0)])
def test_penalties_equal_the_reference_and_count_generated_tokens_only(frequency: float, presence: float) -> None:
    logits, prompts, outputs = random_case(4, seed=3)
    params = SamplingParams(frequency_penalty=frequency, presence_penalty=presence)
    tensors = tensors_for(*[params] * 4)
    actual = process_logits(logits, tensors, seen_of(prompts, outputs), counts_of(outputs))
    expected = reference_penalties(logits, outputs, [frequency] * 4, [presence] * 4)
    torch.testing.assert_close(actual, expected)
    only_prompt = [sorted(set(p) - set(o)) for p, o in zip(prompts, outputs, strict=True)]
    assert any(only_prompt)
    for row, ids in enumerate(only_prompt):  # a prompt token the request did not generate is not penalized
        assert torch.equal(actual[row, ids], logits[row, ids])


def test_with_the_repetition_penalty_they_equal_transformers_then_the_reference() -> None:
    """The repetition penalty counts the prompt (transformers' processor sees prompt + output ids); the
    frequency and presence penalties, applied after it as vLLM does, count the output only."""
    logits, prompts, outputs = random_case(3, seed=5)
    params = [
        SamplingParams(repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.3),
        SamplingParams(repetition_penalty=0.8, frequency_penalty=-0.2),
        SamplingParams(repetition_penalty=1.1),
    ]
    actual = process_logits(logits, tensors_for(*params), seen_of(prompts, outputs), counts_of(outputs))
    expected = torch.empty_like(logits)
    for row, p in enumerate(params):
        input_ids = torch.tensor([prompts[row] + outputs[row]])
        expected[row] = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(input_ids, logits[row : row + 1])[0]
    expected = reference_penalties(
        expected, outputs, [p.frequency_penalty for p in params], [p.presence_penalty for p in params]
    )
    torch.testing.assert_close(actual, expected)


def test_a_row_without_penalties_is_unaffected_in_a_penalized_batch() -> None:
    logits, _, outputs = random_case(3, seed=7)
    tensors = tensors_for(SamplingParams(frequency_penalty=2.0), SamplingParams(), SamplingParams(temperature=0.9))
    assert tensors.has_output_penalty
    counts = counts_of(outputs)
    actual = process_logits(logits, tensors, None, counts)
    assert torch.equal(actual[1:], logits[1:])
    assert not torch.equal(actual[0], logits[0])


def test_no_penalty_needs_no_counts() -> None:
    logits, _, _ = random_case(2, seed=8)
    tensors = tensors_for(SamplingParams(), SamplingParams(temperature=0.5, seed=1))
    assert not tensors.has_output_penalty and not tensors.has_repetition_penalty
    assert torch.equal(process_logits(logits, tensors, None, None), logits)
    with pytest.raises(ValueError, match="generated-token counts"):
        sample(logits, tensors_for(SamplingParams(presence_penalty=0.1)))


def test_greedy_takes_the_argmax_of_the_penalized_logits() -> None:
    """Temperature 0 with frequency_penalty 0.2 (what Open-AutoGLM's phone agent sends): the token generated
    most often loses its lead, and the greedy pick is the penalized argmax, not the raw one."""
    logits = torch.zeros(2, VOCAB)
    logits[:, 9] = 1.0  # the raw favourite, generated 6 times: 1.0 - 6 * 0.2 = -0.2
    logits[:, 4] = 0.5
    outputs = [[9] * 6, [9] * 6]
    agent = SamplingParams(temperature=0.0, top_p=0.85, frequency_penalty=0.2)
    tokens = sample(logits, tensors_for(agent, SamplingParams()), None, counts_of(outputs))
    assert tokens.tolist() == [4, 9]
    reference = reference_penalties(logits, outputs, [0.2, 0.0], [0.0, 0.0]).argmax(dim=-1)
    assert torch.equal(tokens, reference)


def test_sampled_rows_draw_from_the_penalized_distribution() -> None:
    """A presence penalty of 2 on the only likely token moves the draws to the others (before the warpers)."""
    logits = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1]])).expand(2000, 4).contiguous()
    counts = torch.zeros(2000, 4)
    counts[:, 0] = 1
    params = [SamplingParams(temperature=1.0, top_p=0.99, presence_penalty=2.0, seed=row) for row in range(2000)]
    tensors = SamplingTensors.from_rows([SamplingRow(p, 0) for p in params], CPU)
    drawn = torch.bincount(sample(logits, tensors, None, counts), minlength=4).float() / 2000
    expected = torch.softmax(torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1])) - torch.tensor([2.0, 0, 0, 0]), 0)
    assert torch.allclose(drawn, expected, atol=0.04)


def test_counts_follow_decodes_and_survive_preemption_into_another_row() -> None:
    """The runner's bookkeeping: start at the first chunk, one token per decode; a preempted request readmitted
    in another row recounts its output ids, and the row it left is reset for the next request."""
    counts = OutputTokenCounts(4, VOCAB, CPU)
    output_ids: list[int] = []
    counts.start([2], [output_ids])
    for token_id in (5, 8, 5, 5, 1):  # each decode feeds in the token sampled at the step before
        output_ids.append(token_id)
        counts.add(torch.tensor([2]), torch.tensor([token_id]))
    assert torch.equal(counts.rows(torch.tensor([2])), counts_of([output_ids]))
    counts.start([0], [output_ids])  # preempted, readmitted in row 0 after recomputing its prompt and output
    counts.start([2], [[]])  # a new request takes row 2
    assert torch.equal(
        counts.rows(torch.tensor([0, 2])), torch.cat([counts_of([output_ids]), torch.zeros(1, VOCAB)])
    )
    counts.start([0], [output_ids])  # idempotent: a first chunk retried after an out-of-memory
    assert torch.equal(counts.rows(torch.tensor([0])), counts_of([output_ids]))


def test_counts_cost_no_memory_until_a_request_asks_for_a_penalty() -> None:
    counts = OutputTokenCounts(4, VOCAB, CPU)
    assert not counts.is_allocated
    counts.start([1], [[]])
    assert counts.is_allocated


@pytest.mark.parametrize(
    "params", [{"frequency_penalty": 2.5}, {"presence_penalty": -2.01}, {"frequency_penalty": float("nan")}]
)
def test_the_protocol_refuses_penalties_outside_minus_two_to_two(params: dict) -> None:
    with pytest.raises(ValueError, match="out of range"):
        SamplingParams(**params)
    assert SamplingParams(frequency_penalty=-2.0, presence_penalty=2.0).has_output_penalty
    assert not SamplingParams(repetition_penalty=1.2).has_output_penalty
