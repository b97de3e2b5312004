"""Each model family the engine supports, on a tiny checkpoint: greedy output equals transformers' `generate()`
token for token under continuous batching with mixed prompt lengths, eagerly and at static decode shapes.

GLM, Llama and plain Qwen2 are covered by `test_engine.py`; here are the others, with their attention variants:
sliding windows of 8 tokens (Mistral and Phi-3 on every layer, Qwen2 from its second layer, Gemma 2 and 3 on every
other layer), Gemma 2's logit soft-caps and query_pre_attn_scalar, q/k norms (Qwen3, Gemma 3), Gemma 3's local
rope base, GLM-4-0414's extra norms.
"""

from __future__ import annotations

import pytest

from tests.workers.factories import FAMILIES, random_prompt, reference, run_to_end, tokens_of

NEW_FAMILIES = ("glm4", "qwen2-swa", "qwen3", "mistral", "phi3", "gemma2", "gemma3")
WINDOWED = tuple(family for family in NEW_FAMILIES if FAMILIES[family].sliding_window is not None)
# Prompt lengths from below the window to five windows, outputs that run past the window; arrivals staggered so
# requests join while others decode, and prompts over the 16-token budget prefill in chunks.
PROMPT_LENGTHS = (3, 40, 7, 23, 12, 1)
ARRIVAL_STEPS = (0, 0, 1, 2, 4, 6)


def _parity_scenario(engine, model, submit) -> None:
    requests, arrivals = {}, {}
    for i, (length, step) in enumerate(zip(PROMPT_LENGTHS, ARRIVAL_STEPS, strict=True)):
        request = submit(f"r{i}", random_prompt(length, seed=100 + i), 10 + i)
        requests[request.request_id] = request
        arrivals.setdefault(step, []).append(request)
    deltas = run_to_end(engine, arrivals)
    for request_id, request in requests.items():
        expected = reference(model, request.prompt_ids, request.stopping.max_new_tokens)
        assert tokens_of(deltas[request_id]) == expected, request_id


@pytest.mark.parametrize(
    ("family", "decode_mode"),
    [(family, "eager") for family in NEW_FAMILIES] + [(family, "static") for family in WINDOWED],
)
def test_greedy_equals_generate(family, decode_mode, make_engine, reference_model, submit):
    engine = make_engine(family, max_batch_size=4, max_num_batched_tokens=16, decode_mode=decode_mode)
    _parity_scenario(engine, reference_model(family), submit)


@pytest.mark.gpu
@pytest.mark.parametrize("family", [*WINDOWED, "qwen3"])
def test_cuda_graph_decode_equals_generate_in_float32(family, make_engine, reference_model, submit):
    """The window masks and soft-caps inside captured decode graphs (reference: the CPU float32 model)."""
    engine = make_engine(family, device="cuda", dtype="float32", decode_mode="cuda_graphs", max_batch_size=4)
    _parity_scenario(engine, reference_model(family), submit)
    assert engine.runner.static_decoder.num_graphs > 0


@pytest.mark.parametrize("family", WINDOWED)
def test_the_window_changes_the_output(family, checkpoint, reference_model):
    """The parity test means something only if a wrong window would change tokens: without its window (or with
    a window longer than the context) the same checkpoint generates differently."""
    import torch
    from transformers import AutoModelForCausalLM

    unwindowed = AutoModelForCausalLM.from_pretrained(checkpoint(family), dtype=torch.float32, sliding_window=512)
    prompts = [random_prompt(length, seed=100 + i) for i, length in enumerate(PROMPT_LENGTHS)]
    windowed_tokens = [reference(reference_model(family), prompt, 10) for prompt in prompts]
    unwindowed_tokens = [reference(unwindowed.eval(), prompt, 10) for prompt in prompts]
    assert windowed_tokens != unwindowed_tokens


def test_gemma2_logprobs_are_of_the_soft_capped_logits(make_engine, reference_model, submit):
    """Soft-capping the final logits changes no greedy token but every log-probability."""
    import dataclasses

    import torch

    prompt = random_prompt(12, seed=7)
    request = dataclasses.replace(submit("a", prompt, 1), return_logprobs=True)
    (delta,) = run_to_end(make_engine("gemma2"), {0: [request]})["a"]
    with torch.no_grad():
        logits = reference_model("gemma2")(torch.tensor([prompt])).logits[0, -1]  # soft-capped by the model
    expected = torch.log_softmax(logits.float(), dim=-1)[delta.token_ids[0]].item()
    assert delta.logprobs[0].logprob == pytest.approx(expected, abs=1e-4)


def test_multimodal_gemma3_serves_its_language_model(checkpoint, make_engine, tmp_path, submit):
    """Most Gemma 3 checkpoints are `Gemma3ForConditionalGeneration`: the engine runs their language model on
    text prompts, reading the context length and the cache shape from the text config."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3Config, SiglipVisionConfig

    text = AutoModelForCausalLM.from_pretrained(checkpoint("gemma3"), dtype=torch.float32)
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision = SiglipVisionConfig(**sizes, image_size=28, patch_size=14)
    config = Gemma3Config(
        text_config=text.config.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        boi_token_index=637,
        eoi_token_index=638,
        image_token_index=639,  # above every id `random_prompt` draws: the prompts are text only
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.model.language_model.load_state_dict(text.model.state_dict())
    model.lm_head.load_state_dict(text.lm_head.state_dict())
    model.save_pretrained(tmp_path)
    engine = make_engine("gemma3", model_path=str(tmp_path), max_batch_size=4, max_num_batched_tokens=16)
    assert type(engine.runner.model).__name__ == "Gemma3ForConditionalGeneration"
    _parity_scenario(engine, model.eval(), submit)
