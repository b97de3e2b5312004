"""Runs one scheduled batch through the model and samples: all tensor work of a step happens here.

A step is at most one decode forward over every decoding request ([B, 1] tokens) plus a few prefill forwards
([G, n] tokens: the step's prompt chunks grouped by length, each row padded to its group's longest). Each
forward calls the Hugging Face decoder with explicit `position_ids`, no HF cache, and the attention metadata for
the engine's paged cache (each row's block table and the flat cache slot of each new token). The LM head then
runs only on the hidden states that produce a token (every decode row, and the last position of a chunk that ends
its prompt), and one batched sampling call picks all of the step's tokens. The host waits on the device once
per step, to read the sampled ids (twice when log-probabilities were asked for).

A vision-language model's requests with images (GLM-4.1V) prefill from input embeddings whose image rows are
the vision tower's output, at M-RoPE positions, and decode at cache position + rope delta (see
`workers.engine.multimodal`); the cache and attention are the same as for text.

`decode` and `prefill` are separate small functions with fixed-rank inputs. With a `StaticDecoder`, decode runs
at bucketed static shapes instead, replayed from CUDA graphs on a GPU (see `workers.engine.static_decode`).

Each forward is first described by a `DecoderCall` of host lists (token ids, positions, flat cache slots, block
tables), which `run_decode` / `run_prefill` execute. With tensor parallelism rank 0's runner hands every call to
its `mirror` before running it, and the other ranks run the same calls on their own shards and caches: every
scheduler decision (admission, preemption, prefix reuse) reaches them only as these block tables and slots.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from workers.engine.grammar import MaskJob, TokenMasks
from workers.engine.multimodal import (
    encode_images,
    pending_images,
    release_prefilled,
    rope_delta,
    vision_inputs,
)
from workers.engine.output_counts import OutputTokenCounts
from workers.engine.sampling import SamplingRow, SamplingTensors, compute_logprobs, sample
from workers.engine.sequence import PrefillChunk, ScheduledBatch, Sequence
from workers.engine.static_decode import StaticDecoder
from workers.kv.attention import AttentionMetadata
from workers.kv.attention_variants import soft_cap
from workers.kv.blocks import SCRATCH_BLOCK, blocks_for
from workers.kv.cache import PagedKVCache
from workers.model.vision import VisionModel
from workers.protocol import TokenLogprob

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DecoderCall:
    """One decoder forward, from host values: what rank 0 sends the other ranks of a tensor-parallel replica.

    kind: "decode" (one token per row), "prefill" (rows padded to one length) or "capture" (record the decode
    CUDA graphs; no inputs). token_ids, positions, slot_mapping: [B, S], slot_mapping being each new token's
    flat cache slot (padding writes to the scratch block); block_tables: [B, N] the rows' blocks covering
    [0, kv_len), padded with the scratch block; rows: [B] batch rows (`Sequence.slot`), which pick the static
    decode bucket; kv_len: attend over cache positions [0, kv_len). rope_deltas: [B] decode only, what each row's
    rotary position adds to its cache position (M-RoPE requests with images: GLM-4.1V); empty means 0.
    """

    kind: str
    token_ids: list[list[int]]
    positions: list[list[int]]
    slot_mapping: list[list[int]]
    block_tables: list[list[int]]
    rows: list[int]
    kv_len: int
    rope_deltas: list[int] = field(default_factory=list)

    def decode_inputs(self, device: torch.device) -> torch.Tensor:
        """[5, B] int64 on `device`: the row, position, input token id, cache slot and rotary position of each
        row, in one copy."""
        firsts = [[row[0] for row in lists] for lists in (self.positions, self.token_ids, self.slot_mapping)]
        rope = [p + d for p, d in zip(firsts[0], self.rope_deltas, strict=True)] if self.rope_deltas else firsts[0]
        return torch.tensor([self.rows, *firsts, rope], dtype=torch.int64).to(device, non_blocking=True)

    def block_table_tensor(self, device: torch.device) -> torch.Tensor:
        """`block_tables` as [B, N] int64 on `device`."""
        return torch.tensor(self.block_tables, dtype=torch.int64).to(device, non_blocking=True)


CAPTURE = DecoderCall("capture", [], [], [], [], [], 0)


@dataclass(slots=True)
class RunnerOutput:
    """One step's tokens: `token_ids[i]` and `logprobs[i]` belong to `rows[i]`; `failed` rows produced none."""

    rows: list[Sequence] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob | None] = field(default_factory=list)
    failed: list[tuple[Sequence, BaseException]] = field(default_factory=list)


class ModelRunner:
    """Owns the model's forward passes, the KV cache and the per-row token history for the penalties."""

    def __init__(
        self,
        model: torch.nn.Module,
        cache: PagedKVCache,
        max_batch_size: int,
        max_seq_len: int,
        decode_mode: str = "eager",
        *,
        mirror: Callable[[DecoderCall], None] | None = None,
        vision: VisionModel | None = None,
    ) -> None:
        """`decode_mode` is a resolved mode: "eager", "static" or "cuda_graphs" (see `resolve_decode_mode`).
        Rows (`Sequence.slot`) are in [0, max_batch_size); positions below max_seq_len.

        `mirror` (tensor parallelism, rank 0) is given every forward's `DecoderCall` before it runs, so that the
        other ranks run the same forward (see `workers.parallel.ranks`). `vision` is a vision-language model's
        image path (see `workers.engine.multimodal`); with it the runner cannot be mirrored.
        """
        if vision is not None and mirror is not None:
            raise ValueError("images are not served with tensor parallelism; set tensor_parallel_size 1")
        self.mirror = mirror
        self.vision = vision
        self.model = model
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.cache = cache
        self.device = cache.spec.device
        self.vocab_size = self.lm_head.weight.shape[0]
        # Gemma 2 soft-caps its logits after the LM head (the model's forward does it; the engine calls the head).
        self.final_logit_softcapping: float | None = getattr(
            model.config.get_text_config(), "final_logit_softcapping", None
        )
        self.block_size = cache.spec.block_size
        # seen[r, t]: token t occurs in row r's prompt or output (every token is fed in once, and a first chunk
        # marks the cached prefix before it, so by the time the next token is sampled prompt + output are marked).
        self.seen = torch.zeros(max_batch_size, self.vocab_size, dtype=torch.bool, device=self.device)
        # Generated tokens only, for the frequency and presence penalties (see workers.engine.output_counts).
        self.output_counts = OutputTokenCounts(max_batch_size, self.vocab_size, self.device)
        # Constrained rows' token masks, filled on a host thread while the forwards run (workers.engine.grammar).
        self.token_masks = TokenMasks(max_batch_size, self.vocab_size, self.device)
        self.static_decoder = None
        if decode_mode != "eager":
            self.static_decoder = StaticDecoder(
                self.decoder, cache, max_batch_size, max_seq_len, use_graphs=decode_mode == "cuda_graphs"
            )

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> RunnerOutput:
        """Run every forward of the batch, then sample once for all rows that produce a token.

        Out-of-memory in a prefill forward retries its chunks one by one, so it fails only the request whose own
        chunk does not fit; in the decode forward it fails the requests of that forward; in the vision tower the
        requests whose images it was encoding. An image broken past its header fails its request. Any other
        exception propagates (the engine is then considered broken).
        """
        output = RunnerOutput()
        hidden: list[torch.Tensor] = []  # each [rows, hidden_size]
        sampling = batch.decodes + [chunk.seq for chunk in batch.prefills if chunk.is_last]
        masks = self.token_masks.start(sampling)
        if batch.decodes:
            try:
                hidden.append(self.decode(batch.decodes))
                output.rows.extend(batch.decodes)
            except torch.OutOfMemoryError as exc:
                output.failed.extend((seq, exc) for seq in batch.decodes)
        prefills = batch.prefills if self.vision is None else self._encode_images(batch.prefills, output)
        for group in group_chunks(prefills):
            self._prefill_group(group, output, hidden)
        if output.rows:
            self._sample(torch.cat(hidden), output, masks)
        elif masks is not None:
            masks.result()  # every row failed; still join the thread before the next step touches the matchers
        return output

    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """One forward over the newest token of each request; returns the hidden states [B, hidden_size]."""
        host_positions = [seq.num_tokens - 1 for seq in seqs]
        kv_len = max(host_positions) + 1
        call = DecoderCall(
            kind="decode",
            token_ids=[[seq.output_ids[-1]] for seq in seqs],
            positions=[[position] for position in host_positions],
            slot_mapping=[[self._slot(seq, p)] for seq, p in zip(seqs, host_positions, strict=True)],
            block_tables=self._block_tables(seqs, kv_len),
            rows=[seq.slot for seq in seqs],
            kv_len=kv_len,
            rope_deltas=[rope_delta(seq) for seq in seqs] if self.vision is not None else [],
        )
        inputs = call.decode_inputs(self.device)  # [5, B]: row, position, input id, cache slot, rotary position
        self.seen[inputs[0], inputs[2]] = True
        if any(seq.sampling.has_output_penalty for seq in seqs):
            self.output_counts.add(inputs[0], inputs[2])
        return self.run_decode(call, inputs)

    def run_decode(self, call: DecoderCall, inputs: torch.Tensor) -> torch.Tensor:
        """The decode forward of `call` (`inputs` = `call.decode_inputs`); the entry point of every rank."""
        self._mirror(call)
        positions, input_ids = inputs[1][:, None], inputs[2][:, None]  # [B, 1], [B, 1]
        block_tables = call.block_table_tensor(self.device)  # [B, N]
        if self.static_decoder is not None:
            return self.static_decoder.run(inputs, block_tables, max(call.rows), call.kv_len)
        metadata = AttentionMetadata.build(self.cache, inputs[3][:, None], block_tables, positions, call.kv_len)
        # One rotary position per row, the same on M-RoPE's three axes in decode (the model broadcasts [B, 1]).
        return self._forward(input_ids, inputs[4][:, None], metadata)[:, -1]

    def prefill(self, chunks: list[PrefillChunk]) -> torch.Tensor:
        """One forward over prefill chunks of several requests, each a row padded to the longest; returns the
        hidden state at each chunk's last token [len(chunks), hidden_size].

        Padding tokens sit at position 0 and write to the scratch block, where no real query looks.
        """
        length = max(len(chunk.token_ids) for chunk in chunks)
        ids, positions, slots, marks = [], [], [], ([], [])
        for chunk in chunks:
            num_tokens, padding = len(chunk.token_ids), length - len(chunk.token_ids)
            ids.append([*chunk.token_ids, *[0] * padding])
            positions.append([*range(chunk.start, chunk.start + num_tokens), *[0] * padding])
            slots.append([*(self._slot(chunk.seq, p) for p in range(chunk.start, chunk.start + num_tokens))])
            slots[-1].extend([0] * padding)  # flat slot 0 is in the scratch block
            # A first chunk resets its row's history and marks the cached prefix, which it does not feed in.
            marked = chunk.seq.token_ids(0, chunk.start) + chunk.token_ids if chunk.is_first else chunk.token_ids
            marks[0].extend([chunk.seq.slot] * len(marked))
            marks[1].extend(marked)
        fresh = [chunk.seq.slot for chunk in chunks if chunk.is_first]
        if fresh:
            self.seen[fresh] = False  # new requests in reused rows
        self.seen[marks] = True
        starting = [chunk.seq for chunk in chunks if chunk.is_first and chunk.seq.sampling.has_output_penalty]
        if starting:  # recounted from the output ids: nothing for a new request, all of a preempted one's
            self.output_counts.start([seq.slot for seq in starting], [seq.output_ids for seq in starting])
        kv_len = max(chunk.start + len(chunk.token_ids) for chunk in chunks)
        seqs = [chunk.seq for chunk in chunks]
        call = DecoderCall(
            "prefill", ids, positions, slots, self._block_tables(seqs, kv_len), [seq.slot for seq in seqs], kv_len
        )
        with_images = [chunk for chunk in chunks if chunk.seq.vision is not None]
        states = self.run_prefill(call, chunks if with_images else None)  # [G, L, hidden_size]
        if with_images:
            release_prefilled(with_images)
        last = [len(chunk.token_ids) - 1 for chunk in chunks]
        return states[range(len(chunks)), last]

    def run_prefill(self, call: DecoderCall, chunks: list[PrefillChunk] | None = None) -> torch.Tensor:
        """The prefill forward of `call`; returns [G, L, hidden_size]. The entry point of every rank.

        `chunks` (the rows' chunks, when some have images) make the forward take input embeddings with their
        images' rows and M-RoPE positions (`workers.engine.multimodal`); their images were encoded."""
        self._mirror(call)
        inputs = torch.tensor([call.token_ids, call.positions, call.slot_mapping], dtype=torch.int64)
        inputs = inputs.to(self.device, non_blocking=True)  # [3, G, L]
        block_tables = call.block_table_tensor(self.device)
        metadata = AttentionMetadata.build(self.cache, inputs[2], block_tables, inputs[1], call.kv_len)
        if chunks is None:
            return self._forward(inputs[0], inputs[1], metadata)
        images = vision_inputs(chunks, inputs[0], inputs[1], self.model.get_input_embeddings())
        output = self.decoder(
            inputs_embeds=images.embeds,
            position_ids=images.rope_positions,
            use_cache=False,
            attn_metadata=metadata,
        )
        return output.last_hidden_state

    def capture_graphs(self) -> None:
        """Capture the decode CUDA graphs now, on every rank at once (the all-reduce is inside them)."""
        if self.static_decoder is not None:
            self._mirror(CAPTURE)
            self.static_decoder.capture_all()

    def _mirror(self, call: DecoderCall) -> None:
        if self.mirror is not None:
            self.mirror(call)

    def _slot(self, seq: Sequence, position: int) -> int:
        """The flat cache slot of `seq`'s token at `position`."""
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size

    def _block_tables(self, seqs: list[Sequence], kv_len: int) -> list[list[int]]:
        """The rows' block tables covering [0, kv_len), padded with the scratch block: [B, N] host lists."""
        num_blocks = blocks_for(kv_len, self.block_size)
        return [
            [*seq.block_table[:num_blocks], *[SCRATCH_BLOCK] * (num_blocks - len(seq.block_table))] for seq in seqs
        ]

    def _encode_images(self, chunks: list[PrefillChunk], output: RunnerOutput) -> list[PrefillChunk]:
        """One vision tower forward for the images the step's chunks reach; returns the chunks that can run."""
        needing = [chunk for chunk in chunks if pending_images(chunk)]
        if not needing:
            return chunks
        try:
            failed: list[tuple[Sequence, BaseException]] = [*encode_images(needing, self.vision)]
        except torch.OutOfMemoryError as exc:
            failed = [(chunk.seq, exc) for chunk in needing]
        output.failed.extend(failed)
        failed_seqs = {id(seq) for seq, _ in failed}
        return [chunk for chunk in chunks if id(chunk.seq) not in failed_seqs]

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

    def _sample(self, hidden: torch.Tensor, output: RunnerOutput, masks: MaskJob | None = None) -> None:
        """LM head on the producing rows only, then one batched sampling call and one host copy of the ids."""
        # hidden: [N, hidden_size] -> logits: [N, V]
        logits = self.lm_head(hidden).float()
        if self.final_logit_softcapping is not None:
            logits = soft_cap(logits, self.final_logit_softcapping)
        rows = output.rows
        sampling_rows = [SamplingRow(seq.sampling, len(seq.output_ids), seq.masked_token_ids()) for seq in rows]
        tensors = SamplingTensors.from_rows(sampling_rows, self.device)
        seen = counts = None
        if tensors.has_repetition_penalty or tensors.has_output_penalty:
            slots = torch.tensor([seq.slot for seq in rows], dtype=torch.int64).to(self.device, non_blocking=True)
            if tensors.has_repetition_penalty:
                seen = self.seen.index_select(0, slots)  # [N, V]: rows' histories
            if tensors.has_output_penalty:
                counts = self.output_counts.rows(slots)  # [N, V]: rows' generated-token counts
        constrained = self.token_masks.apply(masks, logits, rows)  # [N, V]: banned tokens at -inf
        token_ids = sample(constrained, tensors, seen, counts)  # [N]
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
