"""Plain transformers baselines on the benchmark workload, all greedy with exactly `new_tokens` new tokens.

- `hf_generate_serial`: `model.generate()` one request at a time (concurrency 1).
- `hf_static_batch`: `model.generate()` on waves of `concurrency` prompts (all the same length: no padding).
- `hf_continuous_batching`: transformers' own continuous batching, `model.generate_batch(...)` (paged attention,
  its default configuration), on waves of `concurrency` prompts; where the installed transformers has none it is
  reported as skipped.

Token times come from a streamer (`generate`) or from `record_timestamps` (`generate_batch`). transformers may hand
the streamer a step's tokens a step late (it defers its stop check to avoid a host sync), so a baseline's TTFT and
inter-token latency are accurate to about one step; throughput is exact.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bench.stats import LevelResult, RequestTiming, summarize
from bench.workload import Workload

logger = logging.getLogger(__name__)


def load_hf_model(path: str, device: str, dtype_name: str, quantization: str = "none") -> Any:
    """The checkpoint as a plain `AutoModelForCausalLM` (SDPA attention) on `device`, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from workers.model.loader import quantization_config

    dtype = getattr(torch, dtype_name)
    quantized = quantization_config(quantization, dtype)
    placement = {"device_map": {"": device}} if quantized is not None else {}
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, quantization_config=quantized, local_files_only=True, use_safetensors=True, **placement
    )
    if quantized is None:
        model = model.to(device)
    return model.eval()


def continuous_batching_missing(model: Any) -> str | None:
    """Why `generate_batch` cannot run here, or None when it can."""
    import transformers

    if not hasattr(model, "generate_batch"):
        return f"transformers {transformers.__version__} has no generate_batch (continuous batching)"
    return None


def hf_generate_serial(model: Any, workload: Workload) -> LevelResult:
    """`generate()` one request after the other, `requests_for_level(1)` requests."""
    prompts = workload.prompts(workload.requests_for_level(1))
    _generate(model, prompts[:1], workload.new_tokens)  # warm-up: one whole request, as the reference figure
    timings: list[RequestTiming] = []
    start = time.perf_counter()
    for prompt in prompts:
        timings.extend(_generate(model, [prompt], workload.new_tokens))
    return summarize("hf_generate", 1, timings, time.perf_counter() - start, "transformers generate(), serial")


def hf_static_batch(model: Any, workload: Workload, concurrency: int) -> LevelResult:
    """`generate()` on waves of `concurrency` prompts; a wave's requests are all submitted at its start."""
    prompts = workload.prompts(workload.requests_for_level(concurrency))
    _generate(model, prompts[:concurrency], min(2, workload.new_tokens))  # warm-up at this batch size
    timings: list[RequestTiming] = []
    start = time.perf_counter()
    for first in range(0, len(prompts), concurrency):
        timings.extend(_generate(model, prompts[first : first + concurrency], workload.new_tokens))
    note = "transformers generate(), static batch"
    return summarize("hf_static_batch", concurrency, timings, time.perf_counter() - start, note)


def hf_continuous_batching(model: Any, workload: Workload, concurrency: int) -> LevelResult:
    """`generate_batch` on waves of `concurrency` prompts. Wall time runs from the first request's creation to
    the last token of each wave, so the manager's set-up (cache allocation, graph warm-up) is not counted."""
    from transformers import GenerationConfig

    # eos_token_id -1: transformers' own value for "no EOS", so every request produces max_new_tokens tokens.
    config = GenerationConfig(do_sample=False, max_new_tokens=workload.new_tokens, eos_token_id=-1, pad_token_id=0)
    prompts = workload.prompts(workload.requests_for_level(concurrency))
    timings: list[RequestTiming] = []
    wall = 0.0
    for first in range(0, len(prompts), concurrency):
        wave = prompts[first : first + concurrency]
        outputs = model.generate_batch(inputs=wave, generation_config=config, record_timestamps=True)
        if len(outputs) != len(wave):
            raise RuntimeError(f"generate_batch returned {len(outputs)} results for {len(wave)} requests")
        for output in outputs.values():
            if output.error is not None:
                raise RuntimeError(f"generate_batch failed a request: {output.error}")
            timings.append(RequestTiming(output.created_time, list(output.timestamps or [])))
        wave_timings = timings[-len(wave) :]
        wall += max(t.token_times[-1] for t in wave_timings) - min(t.submit for t in wave_timings)
    note = "transformers generate_batch (continuous batching, its defaults)"
    return summarize("hf_continuous_batching", concurrency, timings, wall, note)


def _generate(model: Any, prompts: list[list[int]], new_tokens: int) -> list[RequestTiming]:
    """One `generate()` call over equal-length prompts; every row gets exactly `new_tokens` tokens."""
    import torch
    from transformers import GenerationConfig

    defaults = model.generation_config
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # EOS is masked until then, so no row stops early
        eos_token_id=defaults.eos_token_id,
        pad_token_id=defaults.pad_token_id if defaults.pad_token_id is not None else 0,
    )
    input_ids = torch.tensor(prompts, dtype=torch.long, device=model.device)  # [B, S]
    clock = _StepClock()
    submit = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
            streamer=clock,
        )
    produced = output.shape[1] - input_ids.shape[1]
    if produced != new_tokens or len(clock.times) != new_tokens:
        raise RuntimeError(f"generate() produced {produced} tokens ({len(clock.times)} steps), not {new_tokens}")
    return [RequestTiming(submit, list(clock.times)) for _ in prompts]


class _StepClock:
    """A `generate()` streamer that records when each step's tokens arrive (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._seen_prompt = False

    def put(self, value: Any) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        now = time.perf_counter()
        # A deferred stop check may hand over several steps at once: value is [B] for one step, [B, k] for k.
        steps = 1 if value.dim() < 2 else value.shape[-1]
        self.times.extend([now] * steps)

    def end(self) -> None:
        pass
