"""Decode at static shapes, the forward that CUDA graphs capture once per bucket and replay every step.

Plain decode runs each step at its exact shape and pays Python and a kernel launch per operator per layer, which
is what bounds Hugging Face code on a fast GPU. Here decode runs over static buffers at a bucket of the
`DecodeBuckets` grid: rows are batch rows 0..rows-1 (a row with no decoding request this step writes its K/V to
the cache's scratch block and reads only the scratch block, and its output is dropped), and attention gathers
each row's blocks through the static block-table buffer, a graph input like the tokens, positions and slots.
With mode "cuda_graphs" each bucket's forward is captured into a CUDA graph on first use (or all at warm-up when
the grid is small) and replayed; with "static" the same forward runs eagerly, which is how the CPU test suite
checks the static path token for token against `generate()`.

Per step the host does one copy in (rows, positions, token ids, cache slots) and one of the block tables, a few
tiny scatters into the static buffers, and one replay; nothing here waits on the device.
"""

from __future__ import annotations

import logging

import torch

from workers.engine.graph_buckets import DecodeBuckets
from workers.kv.attention import AttentionMetadata
from workers.kv.blocks import SCRATCH_BLOCK, blocks_for
from workers.kv.cache import PagedKVCache
from workers.protocol import DECODE_MODES

logger = logging.getLogger(__name__)

# Capture every bucket at warm-up when the grid has at most this many; beyond, capture each on first use.
MAX_WARM_CAPTURES = 96


def resolve_decode_mode(mode: str, device: torch.device) -> str:
    """'auto' is 'cuda_graphs' on CUDA and 'eager' elsewhere; CUDA graphs need a CUDA device."""
    if mode not in DECODE_MODES:
        raise ValueError(f"decode_mode must be one of {', '.join(DECODE_MODES)}; got {mode!r}")
    if mode == "auto":
        return "cuda_graphs" if device.type == "cuda" else "eager"
    if mode == "cuda_graphs" and device.type != "cuda":
        raise ValueError(f"decode_mode cuda_graphs needs a CUDA device; this worker runs on {device}")
    return mode


class StaticDecoder:
    """Static buffers and, in "cuda_graphs" mode, one captured graph per (rows, kv_len) bucket."""

    def __init__(
        self,
        decoder: torch.nn.Module,
        cache: PagedKVCache,
        max_batch_size: int,
        max_seq_len: int,
        use_graphs: bool,
    ) -> None:
        spec = cache.spec
        self.decoder = decoder
        self.cache = cache
        self.device = spec.device
        self.buckets = DecodeBuckets.plan(max_batch_size, max_seq_len)
        self.use_graphs = use_graphs
        # Static inputs of every bucket: bucket `rows` uses the first `rows` entries.
        self.input_ids = torch.zeros(max_batch_size, 1, dtype=torch.int64, device=self.device)  # [R, 1]
        self.positions = torch.zeros_like(self.input_ids)  # [R, 1]: cache positions (the attention mask)
        self.rope_positions = torch.zeros_like(self.input_ids)  # [R, 1]: rotary positions (M-RoPE: + delta)
        self.slot_mapping = torch.zeros_like(self.input_ids)  # [R, 1]: flat cache slot of each row's new K/V
        max_blocks = blocks_for(max_seq_len, spec.block_size)
        self.block_tables = torch.full(
            (max_batch_size, max_blocks), SCRATCH_BLOCK, dtype=torch.int64, device=self.device
        )  # [R, max_blocks]
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def run(self, inputs: torch.Tensor, block_tables: torch.Tensor, highest_row: int, kv_len: int) -> torch.Tensor:
        """Decode one token for each row of `inputs`; returns their hidden states [B, hidden_size].

        inputs: [5, B] int64 on the device: row, position, input token id, cache slot and rotary position of each
        decoding request; block_tables: [B, N] their blocks covering [0, kv_len). `highest_row` and `kv_len` (max
        position + 1) are the host's copies, so picking a bucket needs no sync.
        """
        rows, kv = self.buckets.pick(highest_row, kv_len)
        active = inputs[0]
        self.positions[:rows].zero_()
        self.rope_positions[:rows].zero_()
        self.slot_mapping[:rows].zero_()  # idle rows write to the scratch block
        self.block_tables[:rows].fill_(SCRATCH_BLOCK)
        self.positions[active, 0] = inputs[1]
        self.rope_positions[active, 0] = inputs[4]
        self.input_ids[active, 0] = inputs[2]
        self.slot_mapping[active, 0] = inputs[3]
        self.block_tables[active, : block_tables.shape[1]] = block_tables
        hidden = self._replay(rows, kv) if self.use_graphs else self._forward(rows, kv)
        return hidden.index_select(0, active)  # a copy: the graph's output buffer is reused by the next replay

    def capture_all(self) -> None:
        """Capture every bucket now (largest first, so the smaller graphs reuse its memory pool) if the grid is
        small enough; otherwise buckets are captured on first use. Only idle rows (scratch block) run."""
        if not self.use_graphs or self.buckets.num_buckets > MAX_WARM_CAPTURES:
            return
        self.positions.zero_()
        self.rope_positions.zero_()
        self.slot_mapping.zero_()
        self.block_tables.fill_(SCRATCH_BLOCK)
        for rows in reversed(self.buckets.row_buckets):
            for kv in reversed(self.buckets.kv_buckets):
                self._replay(rows, kv)
                if not self.use_graphs:
                    return
        logger.info("captured %d decode CUDA graphs", len(self._graphs))

    def _forward(self, rows: int, kv_len: int) -> torch.Tensor:
        """The decoder over rows 0..rows-1 at the static buffers; returns [rows, hidden_size]."""
        positions = self.positions[:rows]  # [rows, 1]
        tables = self.block_tables[:rows, : blocks_for(kv_len, self.cache.spec.block_size)]
        metadata = AttentionMetadata.build(self.cache, self.slot_mapping[:rows], tables, positions, kv_len)
        rope_positions = self.rope_positions[:rows]  # [rows, 1]
        output = self.decoder(
            input_ids=self.input_ids[:rows], position_ids=rope_positions, use_cache=False, attn_metadata=metadata
        )
        return output.last_hidden_state[:, -1]

    def _replay(self, rows: int, kv_len: int) -> torch.Tensor:
        captured = self._graphs.get((rows, kv_len))
        if captured is None:
            try:
                captured = self._capture(rows, kv_len)
            except RuntimeError as exc:
                # A model whose forward syncs with the host or branches on tensor values cannot be captured.
                # It still runs, at static shapes without graphs, rather than failing every request.
                logger.warning("CUDA graph capture failed; decode continues without graphs: %s", exc)
                self.use_graphs = False
                torch.cuda.synchronize(self.device)
                return self._forward(rows, kv_len)
        graph, output = captured
        graph.replay()
        return output

    def _capture(self, rows: int, kv_len: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm-up runs on a side stream first (lazy initialisation, cuBLAS workspaces, kernel selection must not
        # happen during capture). They write the same K/V the replay will write, so they change nothing.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(rows, kv_len)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self._forward(rows, kv_len)
        self._pool = graph.pool()
        self._graphs[(rows, kv_len)] = (graph, output)
        return graph, output
