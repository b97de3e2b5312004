"""The strongest plain-transformers baseline: the same HF model code with a StaticCache, and one greedy decode
step captured in a CUDA graph and replayed (GPU only; on the CPU the same step runs eagerly, which is how the
tests check it against `generate()`).

Per wave of `concurrency` equal-length prompts: reset the cache, prefill eagerly, then replay the decode step
`new_tokens - 1` times, reading the step's tokens back to the host after each replay (as a streaming server
must). The step's inputs (token ids [B, 1], positions [B, 1], the 2-D attention mask [B, max_len] and, for
transformers versions whose models still take one, `cache_position` [1]) live in static buffers that are
updated in place between replays. Newer transformers (5.2x) track the write position inside the StaticCache
(a device tensor bumped in place), which the graph replays as well.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

from bench.stats import LevelResult, RequestTiming, summarize
from bench.workload import Workload

logger = logging.getLogger(__name__)

_WARMUP_STEPS = 3  # eager steps on a side stream before capture, as torch.cuda.graphs requires


def hf_cuda_graph(model: Any, workload: Workload, concurrency: int, use_graph: bool = True) -> LevelResult:
    """Greedy decoding of waves of `concurrency` prompts with a StaticCache and a CUDA-graph decode step."""
    prompts = workload.prompts(workload.requests_for_level(concurrency))
    decoder = StaticGraphDecoder(model, concurrency, workload.max_seq_len, use_graph)
    decoder.generate(prompts[:concurrency], min(2, workload.new_tokens))  # warm-up (captures the graph)
    timings: list[RequestTiming] = []
    start = time.perf_counter()
    for first in range(0, len(prompts), concurrency):
        timings.extend(decoder.generate(prompts[first : first + concurrency], workload.new_tokens)[1])
    wall = time.perf_counter() - start
    decoder.close()
    note = "transformers + StaticCache, decode step in a CUDA graph" if use_graph else "StaticCache, eager"
    return summarize("hf_cuda_graph" if use_graph else "hf_static_cache", concurrency, timings, wall, note)


class StaticGraphDecoder:
    """Greedy decoding of a fixed batch size over one StaticCache, the decode step optionally a CUDA graph."""

    def __init__(self, model: Any, batch_size: int, max_len: int, use_graph: bool) -> None:
        import torch
        from transformers import StaticCache

        self.model = model
        self.batch_size = batch_size
        self.max_len = max_len
        self.use_graph = use_graph
        self.device = model.device
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.takes_cache_position = "cache_position" in inspect.signature(model.forward).parameters
        # Static inputs and output of the decode step.
        self.input_ids = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)  # [B, 1]
        self.positions = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)  # [B, 1]
        self.cache_position = torch.zeros(1, dtype=torch.long, device=self.device)  # [1]
        self.attention_mask = torch.zeros(batch_size, max_len, dtype=torch.long, device=self.device)  # [B, L]
        self.next_ids = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # [B]
        self.graph: Any = None

    def generate(self, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], list[RequestTiming]]:
        """Greedy tokens of each prompt (exactly `new_tokens`) and their timings; prompts share one length."""
        import torch

        if len(prompts) != self.batch_size or len({len(p) for p in prompts}) != 1:
            raise ValueError(f"need {self.batch_size} prompts of one length")
        prompt_len = len(prompts[0])
        if prompt_len + new_tokens > self.max_len:
            raise ValueError(f"prompt {prompt_len} + {new_tokens} new tokens exceed the cache ({self.max_len})")
        submit = time.perf_counter()
        with torch.inference_mode():
            if self.use_graph and self.graph is None:
                self._capture(prompt_len)  # before the prefill: its warm-up steps write into the cache
            self.cache.reset()
            first = self._prefill(torch.tensor(prompts, dtype=torch.long, device=self.device))
            columns, times = [first.tolist()], [time.perf_counter()]
            self.next_ids.copy_(first)
            self.attention_mask.zero_()
            self.attention_mask[:, :prompt_len] = 1
            for step in range(1, new_tokens):
                position = prompt_len + step - 1  # the position of the token fed in
                self.input_ids.copy_(self.next_ids[:, None])
                self.positions.fill_(position)
                self.cache_position.fill_(position)
                self.attention_mask[:, position] = 1
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._decode_step()
                columns.append(self.next_ids.tolist())  # the host reads each step's tokens (a sync)
                times.append(time.perf_counter())
        tokens = [list(row) for row in zip(*columns, strict=True)]
        return tokens, [RequestTiming(submit, list(times)) for _ in prompts]

    def close(self) -> None:
        import torch

        self.graph = None
        self.cache = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _prefill(self, input_ids: Any) -> Any:
        import torch

        prompt_len = input_ids.shape[1]
        extra = (
            {"cache_position": torch.arange(prompt_len, device=self.device)} if self.takes_cache_position else {}
        )
        output = self.model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            position_ids=torch.arange(prompt_len, device=self.device)[None].expand(input_ids.shape[0], -1),
            past_key_values=self.cache,
            use_cache=True,
            **extra,
        )
        return output.logits[:, -1].argmax(-1)  # [B]

    def _decode_step(self) -> None:
        extra = {"cache_position": self.cache_position} if self.takes_cache_position else {}
        output = self.model(
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            position_ids=self.positions,
            past_key_values=self.cache,
            use_cache=True,
            **extra,
        )
        self.next_ids.copy_(output.logits[:, -1].argmax(-1))

    def _capture(self, prompt_len: int) -> None:
        """Warm up on a side stream, then capture one decode step; the caller resets the cache afterwards."""
        import torch

        self.positions.fill_(prompt_len)
        self.cache_position.fill_(prompt_len)
        self.attention_mask[:, : prompt_len + 1] = 1
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(_WARMUP_STEPS):
                self._decode_step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._decode_step()
        self.graph = graph
        torch.cuda.synchronize()
