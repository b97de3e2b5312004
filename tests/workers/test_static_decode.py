"""Decode-mode resolution, and decode replayed from CUDA graphs (GPU only; the static shapes themselves are
checked on CPU by the engine parity test in decode_mode "static")."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.workers.factories import random_prompt, reference, run_to_end, tokens_of
from workers.engine.static_decode import resolve_decode_mode


def test_decode_mode_resolution() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_decode_mode("auto", cpu) == "eager"
    assert resolve_decode_mode("auto", cuda) == "cuda_graphs"
    assert resolve_decode_mode("static", cpu) == "static"
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        resolve_decode_mode("cuda_graphs", cpu)
    with pytest.raises(ValueError, match="decode_mode must be one of"):
        resolve_decode_mode("turbo", cpu)


def _staggered_requests(submit, **extra) -> tuple[list, dict[int, list]]:
    """Six requests arriving over several steps, so decode runs with holes among the slots."""
    requests, arrivals = [], {}
    for i, (length, step) in enumerate(zip((3, 40, 7, 23, 16, 1), (0, 0, 1, 2, 4, 6), strict=True)):
        request = dataclasses.replace(submit(f"g{i}", random_prompt(length, seed=100 + i), 6 + 2 * i), **extra)
        requests.append(request)
        arrivals.setdefault(step, []).append(request)
    return requests, arrivals


def _hf_model(path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to("cuda").eval()


@pytest.mark.gpu
def test_graph_replay_equals_generate_in_float32(make_engine, worker_config, submit) -> None:
    """fp32: decode replayed from CUDA graphs gives generate()'s greedy tokens, requests joining and leaving."""
    engine = make_engine("glm", device="cuda", dtype="float32", decode_mode="cuda_graphs", kv_cache_tokens=4096)
    model = _hf_model(worker_config("glm").model_path, torch.float32)
    requests, arrivals = _staggered_requests(submit)
    deltas = run_to_end(engine, arrivals)
    assert engine.runner.static_decoder.num_graphs > 0
    for request in requests:
        expected = reference(model, request.prompt_ids, request.stopping.max_new_tokens)
        assert tokens_of(deltas[request.request_id]) == expected, request.request_id


@pytest.mark.gpu
def test_graph_replay_across_preemptions_equals_generate(make_engine, worker_config, submit) -> None:
    """96 tokens of cache: requests are preempted and recomputed while decode replays graphs over block tables."""
    engine = make_engine("glm", device="cuda", dtype="float32", decode_mode="cuda_graphs", kv_cache_tokens=96)
    model = _hf_model(worker_config("glm").model_path, torch.float32)
    requests, arrivals = _staggered_requests(submit)
    deltas = run_to_end(engine, arrivals, max_steps=2000)
    assert engine.scheduler.stats.num_preemptions > 0 and engine.runner.static_decoder.num_graphs > 0
    for request in requests:
        expected = reference(model, request.prompt_ids, request.stopping.max_new_tokens)
        assert tokens_of(deltas[request.request_id]) == expected, request.request_id


# bf16 rounds differently in every attention kernel, so greedy tokens may part at near-ties. The stated tolerance:
# the log-probability the engine reports for each of its tokens is within 0.05 nats of transformers' own bf16
# forward over the same tokens (teacher-forced).
BF16_LOGPROB_TOLERANCE = 0.05


@pytest.mark.gpu
def test_graph_replay_matches_transformers_within_bf16_tolerance(make_engine, worker_config, submit) -> None:
    engine = make_engine("glm", device="cuda", dtype="bfloat16", decode_mode="cuda_graphs", kv_cache_tokens=4096)
    model = _hf_model(worker_config("glm").model_path, torch.bfloat16)
    requests, arrivals = _staggered_requests(submit, return_logprobs=True)
    deltas = run_to_end(engine, arrivals)
    for request in requests:
        output = tokens_of(deltas[request.request_id])
        engine_logprobs = torch.tensor([lp.logprob for d in deltas[request.request_id] for lp in d.logprobs])
        ids = torch.tensor([list(request.prompt_ids) + output], device="cuda")
        with torch.no_grad():
            logits = model(ids).logits[0, len(request.prompt_ids) - 1 : -1].float()
        expected = torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(request.prompt_ids) :, None])[:, 0]
        assert torch.allclose(engine_logprobs, expected.cpu(), atol=BF16_LOGPROB_TOLERANCE), request.request_id
