"""How many times each token was generated, per batch row, on the device: what OpenAI's frequency and presence
penalties read (`workers.engine.sampling.apply_output_penalties`).

The counts are kept step by step, as the runner keeps its seen-token mask for the repetition penalty. A request's
row starts over at its first prefill chunk since admission, counted from the request's own output ids: none for a
new request; everything it generated for one that was preempted and is recomputed, whatever row it now has. Each
decode then adds the token it feeds in, which is the token sampled at the step before. So whenever a row's next
token is sampled, its counts are those of the request's output ids, and never of its prompt.

Only rows of requests that have such a penalty are counted, and the tensor is allocated when the first of them
starts: a server never asked for these penalties spends neither memory nor a kernel on them. Rows of other
requests hold stale counts, which sampling multiplies by their penalties of 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class OutputTokenCounts:
    """counts[row, token]: how many times the request in `row` generated `token` (float32, exact to 2**24)."""

    def __init__(self, num_rows: int, vocab_size: int, device: torch.device) -> None:
        self.num_rows = num_rows
        self.vocab_size = vocab_size
        self.device = device
        self._counts: torch.Tensor | None = None  # [num_rows, vocab_size], allocated on first use

    @property
    def is_allocated(self) -> bool:
        return self._counts is not None

    def _tensor(self) -> torch.Tensor:
        if self._counts is None:
            self._counts = torch.zeros(self.num_rows, self.vocab_size, dtype=torch.float32, device=self.device)
        return self._counts

    def start(self, rows: Sequence[int], output_ids: Sequence[Sequence[int]]) -> None:
        """Rows of requests at their first chunk since admission: their counts become those of `output_ids`
        (each request's tokens generated so far; empty unless it was preempted). Idempotent."""
        counts = self._tensor()
        counts[list(rows)] = 0.0
        pairs = [(row, token_id) for row, ids in zip(rows, output_ids, strict=True) for token_id in ids]
        if pairs:
            index = torch.tensor(pairs, dtype=torch.int64).T.to(self.device, non_blocking=True)  # [2, M]
            counts.index_put_((index[0], index[1]), counts.new_ones(len(pairs)), accumulate=True)

    def add(self, rows: torch.Tensor, token_ids: torch.Tensor) -> None:
        """Count one token for each row (device tensors [B], as a decode step feeds them in)."""
        counts = self._tensor()
        counts.index_put_((rows, token_ids), counts.new_ones(rows.shape[0]), accumulate=True)

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The counts of `rows` ([N] int64 on the device): [N, vocab_size] float32."""
        return self._tensor().index_select(0, rows)
