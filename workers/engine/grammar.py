"""Constrained decoding: a request's `Constraint` compiled against the checkpoint's tokenizer, and at every step
a token bitmask per constrained row, filled on a host thread while the forward runs and applied to the logits
before sampling.

The grammar library is llguidance (its Rust core releases the GIL while it builds a grammar or fills a mask).
`GrammarCompiler` turns a constraint into a matcher: the compiled matchers are kept pristine in an LRU cache
keyed by (kind, spec), and each request gets a copy. A request's `GrammarState` lives on its `Sequence`, so it
survives preemption: the matcher is fed the request's output tokens lazily (`sync`), whatever the KV cache did.
`TokenMasks` owns the [max_batch_size, words] int32 bitmask (one bit per token id, row = the sequence's batch
row) and the thread that fills it; the model's logits may be wider than the tokenizer's vocabulary, so every mask
covers the logits' width, the ids past the tokenizer being banned.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence as Seq
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import llguidance
import torch

from workers.protocol import Constraint, ConstraintKind, StoppingParams

logger = logging.getLogger(__name__)

# JSON comes out compact but readable (json.dumps' separators) and without free whitespace: with free whitespace
# a weak model can fill max_tokens with blanks inside a valid object.
JSON_OPTIONS: llguidance.JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
ANY_JSON_OBJECT = '{"type": "object"}'
GRAMMAR_CACHE_SIZE = 128  # compiled constraints kept per worker


class GrammarError(ValueError):
    """A constraint does not compile (the message says why); the request fails with INVALID_PARAMETER."""


def grammar_text(constraint: Constraint) -> str:
    """The llguidance grammar of `constraint`; a GrammarError when it is not even well formed."""
    spec = constraint.spec
    try:
        match constraint.kind:
            case ConstraintKind.JSON_SCHEMA:
                return llguidance.LLMatcher.grammar_from_json_schema(spec, defaults=JSON_OPTIONS)
            case ConstraintKind.JSON_OBJECT:
                return llguidance.LLMatcher.grammar_from_json_schema(ANY_JSON_OBJECT, defaults=JSON_OPTIONS)
            case ConstraintKind.REGEX:
                return llguidance.LLMatcher.grammar_from_regex(spec)
            case ConstraintKind.CHOICE:
                return llguidance.grammar_from("choice", spec)
            case ConstraintKind.GRAMMAR:
                return llguidance.grammar_from("grammar", spec)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise GrammarError(str(exc)) from None
    raise GrammarError(f"unknown constraint kind {constraint.kind}")


def checkpoint_eos_ids(checkpoint: Path) -> list[int]:
    """The EOS ids the checkpoint's generation_config.json (else config.json) names; may be empty."""
    for name in ("generation_config.json", "config.json"):
        path = checkpoint / name
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
            ids = value if isinstance(value, list) else [value]
            found = [i for i in ids if isinstance(i, int)]
            if found:
                return found
    return []


def load_tokenizer(checkpoint: str | Path, vocab_size: int) -> llguidance.LLTokenizer | None:
    """The checkpoint's tokenizer (its tokenizer.json) as llguidance sees it, with `vocab_size` ids (the logits'
    width); None when the checkpoint has no tokenizer.json (a slow tokenizer only)."""
    checkpoint = Path(checkpoint)
    path = checkpoint / "tokenizer.json"
    if not path.is_file():
        return None
    # Each request's own EOS ids decide where it may end (TokenMasks); these only tell llguidance what EOS is.
    eos = checkpoint_eos_ids(checkpoint) or None
    return llguidance.LLTokenizer(path.read_text(encoding="utf-8"), n_vocab=vocab_size, eos_token=eos)


class GrammarCompiler:
    """Compiles constraints against one tokenizer; compiled matchers are cached by (kind, spec), LRU-bounded.

    The tokenizer is built on a background thread from the start (seconds for a 150k vocabulary), so the first
    constrained request waits for it only if it comes that early. A tokenizer llguidance cannot read fails the
    constrained requests (GrammarError), never the worker.
    """

    def __init__(
        self, tokenizer: Future[llguidance.LLTokenizer | None], capacity: int = GRAMMAR_CACHE_SIZE
    ) -> None:
        self._tokenizer = tokenizer
        self._capacity = capacity
        self._cache: OrderedDict[tuple[ConstraintKind, str], llguidance.LLMatcher] = OrderedDict()

    @classmethod
    def for_checkpoint(cls, checkpoint: str | Path, vocab_size: int) -> GrammarCompiler:
        pool = ThreadPoolExecutor(1, thread_name_prefix="grammar-tokenizer")
        tokenizer = pool.submit(load_tokenizer, checkpoint, vocab_size)
        pool.shutdown(wait=False)  # the one task still runs; the thread ends with it
        return cls(tokenizer)

    def state(self, constraint: Constraint) -> GrammarState:
        """A fresh matcher for one request; GrammarError when the constraint does not compile here."""
        key = (constraint.kind, constraint.spec)
        pristine = self._cache.get(key)
        tokenizer = self._loaded_tokenizer()
        if pristine is None:
            pristine = llguidance.LLMatcher(tokenizer, grammar_text(constraint), log_level=0)
            if pristine.is_error():
                raise GrammarError(pristine.get_error())
            self._cache[key] = pristine
            if len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return GrammarState(pristine.deep_copy(), tuple(tokenizer.eos_tokens))

    def _loaded_tokenizer(self) -> llguidance.LLTokenizer:
        try:
            tokenizer = self._tokenizer.result()
        except Exception as exc:  # whatever llguidance makes of a tokenizer.json it cannot read
            raise GrammarError(f"the checkpoint's tokenizer.json cannot be used for constraints: {exc}") from None
        if tokenizer is None:
            raise GrammarError("this model's checkpoint has no tokenizer.json, which constraints need")
        return tokenizer


@dataclass(slots=True, eq=False)
class GrammarState:
    """One request's matcher and how many of its output tokens the matcher has consumed."""

    matcher: llguidance.LLMatcher
    grammar_eos_ids: tuple[int, ...] = ()  # what the matcher's masks allow as EOS (the tokenizer's idea of it)
    num_consumed: int = 0

    def sync(self, output_ids: Seq[int]) -> None:
        """Feed the matcher the output tokens it has not seen (the last step's token, or all of them after a
        restart); a token the grammar refuses puts the matcher in its error state, which `TokenMasks` ends."""
        if self.num_consumed < len(output_ids):
            self.matcher.consume_tokens(list(output_ids[self.num_consumed :]))
            self.num_consumed = len(output_ids)

    @property
    def is_error(self) -> bool:
        return self.matcher.is_error()


class Row(Protocol):
    """What the masks read of a batch row (a `workers.engine.sequence.Sequence`)."""

    request_id: str
    slot: int | None
    output_ids: list[int]
    stopping: StoppingParams
    grammar: GrammarState | None


# The mask thread's work for one step; its result: each constrained row's (is_error, is_accepting) by batch row.
MaskJob = Future[dict[int, tuple[bool, bool]]]


class TokenMasks:
    """The step's token bitmask: filled on a host thread during the forward, applied to the logits before
    sampling. Only rows with a `GrammarState` are masked; free rows in the same batch are untouched."""

    def __init__(self, max_batch_size: int, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device
        num_words = (vocab_size + 31) // 32
        pin = device.type == "cuda"
        # bitmask[row, w] bit b: token 32 * w + b is allowed in that row's next position.
        self.bitmask = torch.full((max_batch_size, num_words), -1, dtype=torch.int32, pin_memory=pin)
        # A bitmask row's bytes (little-endian int32 words) AND these give one flag per token id: uint8 work,
        # a quarter of unpacking the int32 words.
        self._bit_values = (1 << torch.arange(8, dtype=torch.int32)).to(torch.uint8).to(device)  # [8]
        self._threads: tuple[ThreadPoolExecutor, llguidance.LLExecutor] | None = None  # made on first use

    def start(self, seqs: Seq[Row]) -> MaskJob | None:
        """Begin filling the masks of the constrained rows of `seqs` (those that sample this step)."""
        constrained = [seq for seq in seqs if seq.grammar is not None]
        if not constrained:
            return None
        if self._threads is None:
            # llguidance's executor fills many rows in parallel on its own threads (a few: the forward may be
            # running on the host's cores too).
            num_threads = max(1, min(8, (os.cpu_count() or 2) // 2))
            self._threads = ThreadPoolExecutor(1, "grammar-masks"), llguidance.LLExecutor(num_threads)
        thread, executor = self._threads
        return thread.submit(self._fill, executor, constrained)

    def _fill(self, executor: llguidance.LLExecutor, seqs: list[Row]) -> dict[int, tuple[bool, bool]]:
        """Runs on the mask thread: as few calls that let go of the GIL as may be (each one may wait a switch
        interval to get it back while the forward's Python holds it), so no torch here. Returns each row's
        (is_error, is_accepting)."""
        for seq in seqs:
            seq.grammar.sync(seq.output_ids)
        row_bytes = self.bitmask.shape[1] * 4
        rows = [(seq.grammar.matcher, seq.slot) for seq in seqs]
        executor.unsafe_compute_mask_ptr(rows, self.bitmask.data_ptr(), row_bytes, self.bitmask.shape[0])
        return {seq.slot: (seq.grammar.is_error, seq.grammar.matcher.is_accepting()) for seq in seqs}

    def apply(self, pending: MaskJob | None, logits: torch.Tensor, rows: Seq[Row]) -> torch.Tensor:
        """Wait for the masks, then the logits with each constrained row's banned tokens at -inf (a copy; the
        raw logits stay for log-probabilities)."""
        if pending is None:
            return logits
        ends = pending.result()
        # logits: [N, V]; constrained: the rows of logits that have a grammar
        constrained = [i for i, seq in enumerate(rows) if seq.grammar is not None]
        if not constrained:
            return logits
        slots = [rows[i].slot for i in constrained]
        packed = self.bitmask[slots].view(torch.uint8).to(self.device, non_blocking=True)  # [M, 4 * W]
        allowed = (packed[:, :, None] & self._bit_values).bool().reshape(len(slots), -1)[:, : logits.shape[1]]
        self._fix_ends(allowed, [rows[i] for i in constrained], ends)  # allowed: [M, V] bool
        if len(constrained) == len(rows):
            return torch.where(allowed, logits, float("-inf"))
        index = torch.tensor(constrained, dtype=torch.int64).to(self.device, non_blocking=True)
        masked = logits.clone()
        masked[index] = torch.where(allowed, logits[index], float("-inf"))
        return masked

    def _fix_ends(self, allowed: torch.Tensor, seqs: list[Row], ends: dict[int, tuple[bool, bool]]) -> None:
        """Each request's own EOS ids are allowed exactly where its grammar may end (and the tokenizer's EOS,
        which llguidance allows there, only if it is one of them); a matcher in error (a token it refused: a
        bug, or every allowed token banned by min_tokens) allows EOS only, which ends the request."""
        # allowed: [M, V] bool, row m for seqs[m]
        rows, columns, values = [], [], []
        for m, seq in enumerate(seqs):
            grammar = seq.grammar
            is_error, is_accepting = ends[seq.slot]
            if is_error:
                logger.warning("request %s: constraint failed: %s", seq.request_id, grammar.matcher.get_error())
                allowed[m] = False
            if seq.stopping.ignore_eos:
                continue
            eos_ids = seq.stopping.eos_token_ids
            for token_id in {*grammar.grammar_eos_ids, *eos_ids}:
                if token_id < self.vocab_size:
                    rows.append(m)
                    columns.append(token_id)
                    values.append((is_error or is_accepting) and token_id in eos_ids)
        if rows:
            index = torch.tensor([rows, columns], dtype=torch.int64).to(self.device, non_blocking=True)
            allowed[index[0], index[1]] = torch.tensor(values).to(self.device, non_blocking=True)
