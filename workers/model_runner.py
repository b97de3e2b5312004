"""Runs one scheduled batch through the model and samples: all tensor work of a step happens here.

A step is at most one decode forward over every decoding request ([B, 1] tokens) plus a few prefill forwards
([G, n] tokens: the step's prompt chunks grouped by length, each row padded to its group's longest). Each
forward calls the Hugging Face decoder with explicit `position_ids`, no HF cache, and the attention metadata for
the engine's slotted cache. The LM head then runs
only on the hidden states that produce a token (every decode row, and the last position of a chunk that ends
its prompt), and one batched sampling call picks all of the step's tokens. The host waits on the device once
per step, to read the sampled ids (twice when log-probabilities were asked for).

`decode` and `prefill` are separate small functions with fixed-rank inputs. With a `StaticDecoder`, decode runs
at bucketed static shapes instead, replayed from CUDA graphs on a GPU (see `workers.static_decode`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from workers.attention import AttentionMetadata
from workers.kv_cache import SlottedKVCache
from workers.protocol import TokenLogprob
from workers.sampling import SamplingRow, SamplingTensors, compute_logprobs, sample
from workers.scheduler import PrefillChunk, ScheduledBatch, Sequence
from workers.static_decode import StaticDecoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DecoderCall:
    """One decoder forward, from host values: what rank 0 sends the other ranks of a tensor-parallel replica.

    kind: "decode" (one token per row), "prefill" (rows padded to one length) or "capture" (record the decode
    CUDA graphs; no inputs). token_ids, positions: [B, S]; slots: [B] cache slots; kv_len: attend over [0, kv_len).
    """

    kind: str
    token_ids: list[list[int]]
    positions: list[list[int]]
    slots: list[int]
    kv_len: int

    def decode_inputs(self, device: torch.device) -> torch.Tensor:
        """[3, B] int64 on `device`: the slot, position and input token id of each row, in one copy."""
        rows = [self.slots, [p[0] for p in self.positions], [t[0] for t in self.token_ids]]
        return torch.tensor(rows, dtype=torch.int64).to(device, non_blocking=True)


@dataclass(slots=True)
class RunnerOutput:
    """One step's tokens: `token_ids[i]` and `logprobs[i]` belong to `rows[i]`; `failed` rows produced none."""

    rows: list[Sequence] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob | None] = field(default_factory=list)
    failed: list[tuple[Sequence, BaseException]] = field(default_factory=list)


class ModelRunner:
    """Owns the model's forward passes, the KV cache and the per-slot token history for repetition penalties."""

    def __init__(
        self,
        model: torch.nn.Module,
        cache: SlottedKVCache,
        decode_mode: str = "eager",
        mirror: Callable[[DecoderCall], None] | None = None,
    ) -> None:
        """`decode_mode` is a resolved mode: "eager", "static" or "cuda_graphs" (see `resolve_decode_mode`).

        `mirror` (tensor parallelism, rank 0) is given every forward's `DecoderCall` before it runs, so that the
        other ranks run the same forward (see `workers.parallel.mirror`).
        """
        self.mirror = mirror
        self.model = model
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.cache = cache
        self.device = cache.spec.device
        self.vocab_size = self.lm_head.weight.shape[0]
        # seen[s, t]: token t occurs in slot s's prompt or output (every token is fed in once, so marking the
        # inputs of each forward tracks prompt + output exactly by the time the next token is sampled).
        self.seen = torch.zeros(cache.spec.num_slots, self.vocab_size, dtype=torch.bool, device=self.device)
        self.static_decoder = None
        if decode_mode != "eager":
            self.static_decoder = StaticDecoder(self.decoder, cache, use_graphs=decode_mode == "cuda_graphs")

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> RunnerOutput:
        """Run every forward of the batch, then sample once for all rows that produce a token.

        Out-of-memory in a prefill forward retries its chunks one by one, so it fails only the request whose own
        chunk does not fit; in the decode forward it fails the requests of that forward. Any other exception
        propagates (the engine is then considered broken).
        """
        output = RunnerOutput()
        hidden: list[torch.Tensor] = []  # each [rows, hidden_size]
        if batch.decodes:
            try:
                hidden.append(self.decode(batch.decodes))
                output.rows.extend(batch.decodes)
            except torch.OutOfMemoryError as exc:
                output.failed.extend((seq, exc) for seq in batch.decodes)
        for group in group_chunks(batch.prefills):
            self._prefill_group(group, output, hidden)
        if output.rows:
            self._sample(torch.cat(hidden), output)
        return output

    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """One forward over the newest token of each request; returns the hidden states [B, hidden_size]."""
        host_positions = [seq.num_tokens - 1 for seq in seqs]
        call = DecoderCall(
            kind="decode",
            token_ids=[[seq.output_ids[-1]] for seq in seqs],
            positions=[[position] for position in host_positions],
            slots=[seq.slot for seq in seqs],
            kv_len=max(host_positions) + 1,
        )
        inputs = call.decode_inputs(self.device)  # [3, B]: slot, position, input id
        self.seen[inputs[0], inputs[2]] = True
        return self.run_decode(call, inputs)

    def run_decode(self, call: DecoderCall, inputs: torch.Tensor) -> torch.Tensor:
        """The decode forward of `call` (`inputs` = `call.decode_inputs`); the entry point of every rank."""
        self._mirror(call)
        slots, positions, input_ids = inputs[0], inputs[1][:, None], inputs[2][:, None]  # [B], [B, 1], [B, 1]
        if self.static_decoder is not None:
            return self.static_decoder.run(inputs, max(call.slots), call.kv_len)
        metadata = AttentionMetadata.build(self.cache, slots, positions, call.slots, call.kv_len)
        return self._forward(input_ids, positions, metadata)[:, -1]

    def prefill(self, chunks: list[PrefillChunk]) -> torch.Tensor:
        """One forward over prompt chunks of several requests, each a row padded to the longest; returns the
        hidden state at each chunk's last token [len(chunks), hidden_size].

        Padding tokens sit at the cache's scratch position: their K/V land there, and no real query sees them.
        """
        scratch = self.cache.spec.scratch_position
        length = max(len(chunk.token_ids) for chunk in chunks)
        ids, positions, marks = [], [], ([], [])
        for chunk in chunks:
            num_tokens, padding = len(chunk.token_ids), length - len(chunk.token_ids)
            ids.append([*chunk.token_ids, *[0] * padding])
            positions.append([*range(chunk.start, chunk.start + num_tokens), *[scratch] * padding])
            marks[0].extend([chunk.seq.slot] * num_tokens)
            marks[1].extend(chunk.token_ids)
        fresh = [chunk.seq.slot for chunk in chunks if chunk.start == 0]
        if fresh:
            self.seen[fresh] = False  # new requests in reused slots
        self.seen[marks] = True
        kv_len = max(chunk.start + len(chunk.token_ids) for chunk in chunks)
        call = DecoderCall("prefill", ids, positions, [chunk.seq.slot for chunk in chunks], kv_len)
        states = self.run_prefill(call)  # [G, L, hidden_size]
        last = [len(chunk.token_ids) - 1 for chunk in chunks]
        return states[range(len(chunks)), last]

    def run_prefill(self, call: DecoderCall) -> torch.Tensor:
        """The prefill forward of `call`; returns [G, L, hidden_size]. The entry point of every rank."""
        self._mirror(call)
        inputs = torch.tensor([call.token_ids, call.positions], dtype=torch.int64)
        inputs = inputs.to(self.device, non_blocking=True)
        slots = torch.tensor(call.slots, dtype=torch.int64).to(self.device, non_blocking=True)  # [G]
        metadata = AttentionMetadata.build(self.cache, slots, inputs[1], call.slots, call.kv_len)
        return self._forward(inputs[0], inputs[1], metadata)  # inputs: [2, G, L]

    def capture_graphs(self) -> None:
        """Capture the decode CUDA graphs now, on every rank at once (the all-reduce is inside them)."""
        if self.static_decoder is not None:
            self._mirror(DecoderCall("capture", [], [], [], 0))
            self.static_decoder.capture_all()

    def _mirror(self, call: DecoderCall) -> None:
        if self.mirror is not None:
            self.mirror(call)

    def _prefill_group(self, group: list[PrefillChunk], output: RunnerOutput, hidden: list[torch.Tensor]) -> None:
        try:
            states = self.prefill(group)  # [G, hidden_size]
        except torch.OutOfMemoryError as exc:
            if len(group) == 1:
                output.failed.append((group[0].seq, exc))
                return
            for chunk in group:
                self._prefill_group([chunk], output, hidden)
            return
        ending = [i for i, chunk in enumerate(group) if chunk.is_last]
        if ending:
            hidden.append(states[ending])
            output.rows.extend(group[i].seq for i in ending)

    def _forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata
    ) -> torch.Tensor:
        # input_ids, positions: [B, S] -> hidden states [B, S, hidden_size]
        output = self.decoder(input_ids=input_ids, position_ids=positions, use_cache=False, attn_metadata=metadata)
        return output.last_hidden_state

    def _sample(self, hidden: torch.Tensor, output: RunnerOutput) -> None:
        """LM head on the producing rows only, then one batched sampling call and one host copy of the ids."""
        # hidden: [N, hidden_size] -> logits: [N, V]
        logits = self.lm_head(hidden).float()
        rows = output.rows
        sampling_rows = [SamplingRow(seq.sampling, len(seq.output_ids), seq.masked_token_ids()) for seq in rows]
        tensors = SamplingTensors.from_rows(sampling_rows, self.device)
        seen = None
        if tensors.has_penalty:
            slots = torch.tensor([seq.slot for seq in rows], dtype=torch.int64).to(self.device, non_blocking=True)
            seen = self.seen.index_select(0, slots)  # [N, V]
        token_ids = sample(logits, tensors, seen)  # [N]
        output.token_ids = token_ids.tolist()
        if any(seq.return_logprobs for seq in rows):
            output.logprobs = _logprobs(logits, token_ids, output.token_ids, rows)
        else:
            output.logprobs = [None] * len(rows)


def _logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, host_ids: list[int], rows: list[Sequence]
) -> list[TokenLogprob | None]:
    """Log-probabilities for the rows that asked, with one host copy for values and one for ids."""
    num_top = max(seq.top_logprobs for seq in rows if seq.return_logprobs)
    chosen, top_values, top_ids = compute_logprobs(logits, token_ids, num_top)
    values = torch.cat([chosen[:, None], top_values], dim=1).tolist()  # [N, 1 + num_top]
    alternatives = top_ids.tolist()
    result: list[TokenLogprob | None] = []
    for i, seq in enumerate(rows):
        if not seq.return_logprobs:
            result.append(None)
            continue
        num = seq.top_logprobs
        top = tuple(zip(alternatives[i][:num], values[i][1 : 1 + num], strict=True))
        result.append(TokenLogprob(token_id=host_ids[i], logprob=values[i][0], top=top))
    return result


# A group of prefill chunks runs as one forward padded to its longest chunk; padding may add at most this share of
# the group's real tokens. One forward instead of one per chunk saves a pass over the weights and a launch per
# operator per chunk; unbounded padding would spend that saving on tokens that are thrown away.
MAX_PADDING_SHARE = 0.25


def group_chunks(chunks: list[PrefillChunk]) -> list[list[PrefillChunk]]:
    """Split a step's prefill chunks into forwards: longest first, each group padded by at most
    MAX_PADDING_SHARE of its real tokens."""
    groups: list[list[PrefillChunk]] = []
    real = 0
    for chunk in sorted(chunks, key=lambda c: len(c.token_ids), reverse=True):
        size = len(chunk.token_ids)
        if groups:
            longest = len(groups[-1][0].token_ids)
            if longest * (len(groups[-1]) + 1) <= (1 + MAX_PADDING_SHARE) * (real + size):
                groups[-1].append(chunk)
                real += size
                continue
        groups.append([chunk])
        real = size
    return groups
