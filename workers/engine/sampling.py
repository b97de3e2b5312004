"""Batched, per-request sampling on the device: every row of the batch has its own parameters and seed.

The order follows transformers' `generate`: logits processors first (repetition penalty; then OpenAI's frequency
and presence penalties, after the repetition penalty as vLLM applies them; then the `min_new_tokens` mask), then
for sampled rows the warpers (temperature, top-k, top-p), then the draw. Temperature 0 rows take the argmax of
the processed logits, like `generate(do_sample=False)` with the same processors: penalties apply to greedy rows.

The draw is Gumbel-max: argmax(logits / T + g) with g = -log(-log(u)) samples from softmax(logits / T). The
uniforms u come from a counter-based integer hash of (seed, output position, token id), computed for the whole
batch at once. A request's tokens therefore depend only on its seed, its logits and its position, never on
which other requests share the batch or in which row it sits, and no per-row generator state is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workers.protocol import SamplingParams

_MASK32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """(x * c) mod 2**32 for 32-bit x (a Python int or an int64 tensor) without overflowing int64."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def mix32(x):
    """A 32-bit integer hash with full avalanche (Wellons' lowbias32), for Python ints and int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_key(seed: int, output_position: int) -> int:
    """The hash key of one draw: which request (seed) and which of its tokens (position)."""
    key = mix32(seed & _MASK32)
    key = mix32(key ^ ((seed >> 32) & _MASK32))
    return mix32(key ^ (output_position & _MASK32))


def gumbel_noise(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise for every (row, token id): a pure function of the row's key and the token id."""
    # keys: [N] int64 in [0, 2**32); token_ids: [V]
    token_ids = torch.arange(vocab_size, device=keys.device, dtype=torch.int64)
    bits = mix32(mix32((keys[:, None] + _mul32(token_ids[None, :], 0x9E3779B1)) & _MASK32))  # [N, V]
    # 24 random bits to a float32 uniform strictly inside (0, 1), so neither log below sees 0.
    uniform = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return -torch.log(-torch.log(uniform))


@dataclass(frozen=True, slots=True)
class SamplingRow:
    """What sampling needs to know about one row: its parameters, which token it draws and what is banned."""

    params: SamplingParams
    output_position: int
    masked_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SamplingTensors:
    """The per-row parameters of one batch as device tensors, built once per step with a few host copies."""

    temperature: torch.Tensor  # [N] float32, 0 = greedy
    top_k: torch.Tensor  # [N] int64, 0 = off
    top_p: torch.Tensor  # [N] float32, 1 = off
    repetition_penalty: torch.Tensor  # [N] float32, 1 = off
    frequency_penalty: torch.Tensor  # [N] float32, 0 = off
    presence_penalty: torch.Tensor  # [N] float32, 0 = off
    keys: torch.Tensor  # [N] int64: row_key(seed, output position)
    masked_rows: torch.Tensor | None  # [M] int64: row of each banned (row, token id) pair
    masked_token_ids: torch.Tensor | None  # [M] int64
    is_all_greedy: bool
    has_truncation: bool
    has_repetition_penalty: bool
    has_output_penalty: bool  # some row has a frequency or presence penalty

    @classmethod
    def from_rows(cls, rows: Sequence[SamplingRow], device: torch.device) -> SamplingTensors:
        params = [row.params for row in rows]
        names = ("temperature", "top_p", "repetition_penalty", "frequency_penalty", "presence_penalty")
        floats = torch.tensor([[getattr(p, name) for p in params] for name in names], dtype=torch.float32)
        floats = floats.to(device)  # [5, N]
        keys = [row_key(p.seed, row.output_position) for p, row in zip(params, rows, strict=True)]
        ints = torch.tensor([[p.top_k for p in params], keys], dtype=torch.int64).to(device)
        banned = [(i, token_id) for i, row in enumerate(rows) for token_id in row.masked_token_ids]
        banned_tensor = torch.tensor(banned, dtype=torch.int64).T.to(device) if banned else None
        sampled = [p for p in params if not p.is_greedy]
        return cls(
            temperature=floats[0],
            top_k=ints[0],
            top_p=floats[1],
            repetition_penalty=floats[2],
            frequency_penalty=floats[3],
            presence_penalty=floats[4],
            keys=ints[1],
            masked_rows=None if banned_tensor is None else banned_tensor[0],
            masked_token_ids=None if banned_tensor is None else banned_tensor[1],
            is_all_greedy=not sampled,
            has_truncation=any(p.top_k > 0 or p.top_p < 1.0 for p in sampled),
            has_repetition_penalty=any(p.repetition_penalty != 1.0 for p in params),
            has_output_penalty=any(p.has_output_penalty for p in params),
        )


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """transformers' repetition penalty per row: seen tokens' logits are divided by p if positive, else times p."""
    # logits: [N, V]; seen: [N, V] bool (prompt + output ids); penalty: [N]
    penalty = penalty[:, None]
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def apply_output_penalties(
    logits: torch.Tensor, counts: torch.Tensor, frequency: torch.Tensor, presence: torch.Tensor
) -> torch.Tensor:
    """OpenAI's penalties per row: logits - (frequency * count + presence * (count > 0)), over generated tokens."""
    # logits: [N, V]; counts: [N, V] float32, times each token was generated (prompt not counted); frequency,
    # presence: [N]
    return logits - (frequency[:, None] * counts + presence[:, None] * (counts > 0))


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """transformers' TopK then TopP warpers per row (-inf outside), with one ascending sort for both."""
    # logits: [N, V]; top_k: [N] (0 = off); top_p: [N] (1 = off)
    vocab_size = logits.shape[-1]
    sorted_logits, sorted_ids = logits.sort(dim=-1)  # ascending, as TopPLogitsWarper sorts
    k = torch.where(top_k > 0, top_k.clamp(max=vocab_size), vocab_size)
    kth_largest = sorted_logits.gather(-1, (vocab_size - k)[:, None])  # [N, 1]
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth_largest, float("-inf"))
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    to_remove = cumulative <= (1.0 - top_p)[:, None]
    to_remove[:, -1] = False  # always keep the most likely token
    sorted_logits = sorted_logits.masked_fill(to_remove, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, sorted_ids, sorted_logits)


def process_logits(
    logits: torch.Tensor, tensors: SamplingTensors, seen: torch.Tensor | None, counts: torch.Tensor | None = None
) -> torch.Tensor:
    """The logits processors: repetition penalty over `seen` ([N, V] bool: prompt and output), frequency and
    presence penalties over `counts` ([N, V] float32: output only), then the min_new_tokens mask. Each runs only
    when some row of the batch uses it."""
    if tensors.has_repetition_penalty:
        if seen is None:
            raise ValueError("a repetition penalty needs the rows' seen-token mask")
        logits = apply_repetition_penalty(logits, seen, tensors.repetition_penalty)
    if tensors.has_output_penalty:
        if counts is None:
            raise ValueError("a frequency or presence penalty needs the rows' generated-token counts")
        logits = apply_output_penalties(logits, counts, tensors.frequency_penalty, tensors.presence_penalty)
    if tensors.masked_rows is not None:
        banned = (tensors.masked_rows, tensors.masked_token_ids)
        logits = logits.index_put(banned, logits.new_tensor(float("-inf")))
    return logits


def sample(
    logits: torch.Tensor,
    tensors: SamplingTensors,
    seen: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one token per row; returns [N] int64 on the logits' device (no host sync here). `seen` is needed when
    a row has a repetition penalty, `counts` when one has a frequency or presence penalty (see process_logits)."""
    # logits: [N, V] float32, the model's raw output
    processed = process_logits(logits, tensors, seen, counts)
    greedy = processed.argmax(dim=-1)
    if tensors.is_all_greedy:
        return greedy
    temperature = torch.where(tensors.temperature > 0, tensors.temperature, 1.0)
    scaled = processed / temperature[:, None]
    if tensors.has_truncation:
        scaled = apply_top_k_top_p(scaled, tensors.top_k, tensors.top_p)
    drawn = (scaled + gumbel_noise(tensors.keys, scaled.shape[-1])).argmax(dim=-1)
    return torch.where(tensors.temperature > 0, drawn, greedy)


def compute_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, num_top: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities under the raw model distribution (before any processing) of the chosen tokens.

    Returns (chosen [N], top values [N, num_top], top ids [N, num_top]), the alternatives most likely first.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [N, V]
    chosen = logprobs.gather(-1, token_ids[:, None])[:, 0]
    if num_top == 0:
        return chosen, logprobs[:, :0], token_ids[:, None][:, :0]
    top_values, top_ids = logprobs.topk(num_top, dim=-1)
    return chosen, top_values, top_ids
