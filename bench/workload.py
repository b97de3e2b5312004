"""The workload every system runs: random prompts of one length, a fixed number of new tokens, greedy.

Prompts are random token ids drawn from a range every system accepts (the gateway checks ids against its
tokenizer, whose vocabulary may be smaller than the model's). Each request must produce exactly `new_tokens`
tokens (EOS is ignored), so every system does the same work. At concurrency C a level runs
`requests_for_level(C)` requests: C at a time, a new one starting as soon as one finishes (closed loop), or in
waves of C for the static-batch baselines.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Workload:
    """What to run. `token_low`/`token_high` bound the prompt ids (high exclusive)."""

    prompt_len: int
    new_tokens: int
    concurrency: tuple[int, ...]
    token_low: int
    token_high: int
    min_requests: int = 4
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prompt_len < 1 or self.new_tokens < 1:
            raise ValueError(f"prompt_len and new_tokens must be at least 1: {self.prompt_len}, {self.new_tokens}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency levels must be at least 1, got {self.concurrency}")
        if not 0 <= self.token_low < self.token_high:
            raise ValueError(f"token range [{self.token_low}, {self.token_high}) is empty")
        if self.min_requests < 1:
            raise ValueError(f"min_requests must be at least 1, got {self.min_requests}")

    @property
    def max_concurrency(self) -> int:
        return max(self.concurrency)

    @property
    def max_seq_len(self) -> int:
        """Context the systems need: prompt + output, plus a small margin."""
        return self.prompt_len + self.new_tokens + 8

    def requests_for_level(self, concurrency: int) -> int:
        """At least `min_requests` and at least one full wave, rounded up to whole waves of `concurrency`."""
        return math.ceil(max(concurrency, self.min_requests) / concurrency) * concurrency

    def prompts(self, num_requests: int) -> list[list[int]]:
        """The first `num_requests` prompts; the same seed gives the same prompts in every process."""
        rng = random.Random(self.seed)
        return [
            [rng.randrange(self.token_low, self.token_high) for _ in range(self.prompt_len)]
            for _ in range(num_requests)
        ]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["concurrency"] = list(self.concurrency)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Workload:
        return cls(**{**data, "concurrency": tuple(data["concurrency"])})


def parse_levels(text: str) -> tuple[int, ...]:
    """'1,16,64,256' -> (1, 16, 64, 256), sorted and deduplicated; ValueError on anything else."""
    try:
        levels = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"concurrency must be a comma-separated list of integers, got {text!r}") from None
    if not levels or levels[0] < 1:
        raise ValueError(f"concurrency levels must be positive integers, got {text!r}")
    return tuple(levels)
