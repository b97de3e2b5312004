"""Decode at static shapes, the forward that CUDA graphs capture once per bucket and replay every step.

Plain decode runs each step at its exact shape and pays Python and a kernel launch per operator per layer, which
is what bounds Hugging Face code on a fast GPU. Here decode runs over static buffers at a bucket of the
`DecodeBuckets` grid: rows are cache slots 0..rows-1 (a row whose slot is not decoding this step reads a valid
stale token and writes its K/V to the cache's scratch position, and its output is dropped), and attention reads
the cache as a view over [0, kv_len). With mode "cuda_graphs" each bucket's forward is captured into a CUDA graph
on first use (or all at warm-up when the grid is small) and replayed; with "static" the same forward runs eagerly,
which is how the CPU test suite checks the static path token for token against `generate()`.

Per step the host does one copy in (slots, positions, token ids), a few tiny scatters into the static buffers, and
one replay; nothing here waits on the device.
"""

from __future__ import annotations

import logging

import torch

from workers.attention import AttentionMetadata
from workers.graph_buckets import DecodeBuckets
from workers.kv_cache import SlottedKVCache
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

    def __init__(self, decoder: torch.nn.Module, cache: SlottedKVCache, use_graphs: bool) -> None:
        spec = cache.spec
        self.decoder = decoder
        self.cache = cache
        self.device = spec.device
        self.buckets = DecodeBuckets.plan(spec.num_slots, spec.max_seq_len)
        self.use_graphs = use_graphs
        self._scratch = spec.scratch_position
        # Static inputs of every bucket: bucket `rows` uses the first `rows` entries.
        self.input_ids = torch.zeros(spec.num_slots, 1, dtype=torch.int64, device=self.device)  # [slots, 1]
        self.positions = torch.full_like(self.input_ids, self._scratch)  # [slots, 1]
        self.slots = torch.arange(spec.num_slots, dtype=torch.int64, device=self.device)  # [slots]
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def run(self, inputs: torch.Tensor, highest_slot: int, kv_len: int) -> torch.Tensor:
        """Decode one token for each row of `inputs`; returns their hidden states [B, hidden_size].

        inputs: [3, B] int64 on the device: slot, position and input token id of each decoding request.
        `highest_slot` and `kv_len` (max position + 1) are the host's copies, so picking a bucket needs no sync.
        """
        rows, kv = self.buckets.pick(highest_slot, kv_len)
        slots = inputs[0]
        self.positions[:rows].fill_(self._scratch)
        self.positions[slots, 0] = inputs[1]
        self.input_ids[slots, 0] = inputs[2]
        hidden = self._replay(rows, kv) if self.use_graphs else self._forward(rows, kv)
        return hidden.index_select(0, slots)  # a copy: the graph's output buffer is reused by the next replay

    def capture_all(self) -> None:
        """Capture every bucket now (largest first, so the smaller graphs reuse its memory pool) if the grid is
        small enough; otherwise buckets are captured on first use. Only rows at the scratch position run."""
        if not self.use_graphs or self.buckets.num_buckets > MAX_WARM_CAPTURES:
            return
        self.positions.fill_(self._scratch)
        for rows in reversed(self.buckets.row_buckets):
            for kv in reversed(self.buckets.kv_buckets):
                self._replay(rows, kv)
                if not self.use_graphs:
                    return
        logger.info("captured %d decode CUDA graphs", len(self._graphs))

    def _forward(self, rows: int, kv_len: int) -> torch.Tensor:
        """The decoder over slots 0..rows-1 at the static buffers; returns [rows, hidden_size]."""
        positions = self.positions[:rows]  # [rows, 1]
        metadata = AttentionMetadata.build(self.cache, self.slots[:rows], positions, list(range(rows)), kv_len)
        output = self.decoder(
            input_ids=self.input_ids[:rows], position_ids=positions, use_cache=False, attn_metadata=metadata
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
