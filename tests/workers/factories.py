"""Plain helpers shared by the worker tests: requests, prompts, the transformers reference, a step loop."""

from __future__ import annotations

import random
from typing import Any, NamedTuple

import torch

from workers.protocol import SamplingParams, StepOutput, StoppingParams, Submit

ARCHITECTURES = ("glm", "llama", "qwen2")


class Family(NamedTuple):
    """A tiny checkpoint the worker tests build: its architecture, sliding window, seed and config overrides."""

    architecture: str
    sliding_window: int | None
    seed: int
    config: dict[str, Any] = {}


# The windows (8 tokens) are shorter than the tests' prompts plus outputs, so a query that saw too much or too
# little changes tokens. Gemma 2's soft-caps are tightened from 50 and 30 so that they change tokens too.
FAMILIES: dict[str, Family] = {
    "glm": Family("glm", None, 11),
    "llama": Family("llama", None, 12),
    "qwen2": Family("qwen2", None, 13),
    "glm4": Family("glm4", None, 14),
    "qwen2-swa": Family("qwen2", 8, 15),
    "qwen3": Family("qwen3", None, 16),
    "mistral": Family("mistral", 8, 17),
    "phi3": Family("phi3", 8, 18),
    "gemma2": Family("gemma2", 8, 19, {"attn_logit_softcapping": 2.0, "final_logit_softcapping": 2.0}),
    "gemma3": Family("gemma3", 8, 20),
}


def make_submit(
    request_id: str,
    prompt_ids: tuple[int, ...],
    max_new_tokens: int = 8,
    sampling: SamplingParams | None = None,
    **stopping,
) -> Submit:
    """A Submit with greedy sampling unless told otherwise; extra keywords go to StoppingParams."""
    stopping.setdefault("ignore_eos", True)
    return Submit(
        request_id=request_id,
        prompt_ids=tuple(prompt_ids),
        sampling=sampling or SamplingParams(),
        stopping=StoppingParams(max_new_tokens=max_new_tokens, **stopping),
    )


def random_prompt(length: int, seed: int, vocab_size: int = 600) -> tuple[int, ...]:
    rng = random.Random(seed)
    return tuple(rng.randrange(4, vocab_size) for _ in range(length))


def reference(model, prompt: tuple[int, ...], max_new_tokens: int, **generate_kwargs) -> list[int]:
    """transformers' greedy output; eos_token_id=None unless given, to match ignore_eos."""
    generate_kwargs.setdefault("eos_token_id", None)
    input_ids = torch.tensor([prompt])
    output = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=0,
        **generate_kwargs,
    )
    return output[0, len(prompt) :].tolist()


class OutputPenalty:
    """OpenAI's frequency and presence penalties as a transformers logits processor, written plainly: every token
    after the prompt is counted. `reference(..., logits_processor=[OutputPenalty(...)])` applies it after the
    repetition penalty, as the engine does."""

    def __init__(self, num_prompt_tokens: int, frequency: float, presence: float) -> None:
        self.num_prompt_tokens, self.frequency, self.presence = num_prompt_tokens, frequency, presence

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # input_ids: [B, prompt + generated]; scores: [B, V]
        generated = input_ids[:, self.num_prompt_tokens :]
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        return scores - (self.frequency * counts + self.presence * (counts > 0))


def reference_with_penalties(
    model, prompt: tuple[int, ...], max_new_tokens: int, sampling: SamplingParams
) -> list[int]:
    """transformers' greedy output under every penalty of `sampling` (repetition, then frequency and presence)."""
    from transformers import LogitsProcessorList

    penalty = OutputPenalty(len(prompt), sampling.frequency_penalty, sampling.presence_penalty)
    return reference(
        model,
        prompt,
        max_new_tokens,
        repetition_penalty=sampling.repetition_penalty,
        logits_processor=LogitsProcessorList([penalty]),
    )


def run_to_end(engine, arrivals: dict[int, list] | None = None, max_steps: int = 500) -> dict[str, list]:
    """Step until idle, submitting `arrivals[step]` before each step; returns every request's deltas."""
    arrivals = arrivals or {}
    deltas: dict[str, list] = {}
    for step in range(max_steps):
        for submit in arrivals.get(step, []):
            engine.add(submit)
        if not engine.has_work() and step > max(arrivals, default=0):
            return deltas
        if engine.has_work():
            output: StepOutput = engine.step()
            ids = [delta.request_id for delta in output.deltas]
            assert len(ids) == len(set(ids)), "one delta per request per step"
            for delta in output.deltas:
                deltas.setdefault(delta.request_id, []).append(delta)
    raise AssertionError("the engine did not finish")


def tokens_of(deltas: list) -> list[int]:
    return [token for delta in deltas for token in delta.token_ids]
