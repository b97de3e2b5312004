"""Models the engine cannot run are refused at load with one error naming the architecture and the feature; the
attention variants it does run are checked here against transformers' own formulas."""

from __future__ import annotations

import pytest
import torch

from workers.kv.attention_variants import attend, visible_keys
from workers.model.loader import load_model
from workers.model.support import UnsupportedModelError
from workers.protocol import WorkerConfig

_SMALL = {
    "pad_token_id": 0,
    "eos_token_id": 1,
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 64,
}
_MOE = {"num_local_experts": 2, "num_experts_per_tok": 1}
_LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4, "rope_theta": 1e4}

# config class, its keywords, the architecture and the feature the refusal must name.
REFUSED = {
    "alibi": ("BloomConfig", {"vocab_size": 128, "hidden_size": 32, "n_layer": 2}, "Bloom", "AttentionInterface"),
    "logit_scale": ("CohereConfig", {**_SMALL, "logit_scale": 0.5}, "CohereForCausalLM", "logit_scale"),
    "sinks": ("GptOssConfig", {**_SMALL, **_MOE, "sliding_window": 8}, "GptOssForCausalLM", "sinks"),
    "chunked": (
        "Llama4TextConfig",
        {**_SMALL, "intermediate_size_mlp": 64, "num_local_experts": 1, "attention_chunk_size": 16},
        "Llama4ForCausalLM",
        "chunked attention",
    ),
    "longrope": (
        "Phi3Config",
        {**_SMALL, "rope_parameters": _LONGROPE, "original_max_position_embeddings": 32},
        "Phi3ForCausalLM",
        "'longrope'",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_unsupported_models_are_refused_at_load(case, tmp_path):
    import transformers

    config_class, keywords, architecture, feature = REFUSED[case]
    model_config = getattr(transformers, config_class)(**keywords)
    transformers.AutoModelForCausalLM.from_config(model_config).save_pretrained(tmp_path)
    config = WorkerConfig(worker_id=0, model_path=str(tmp_path), model_id=case, max_batch_size=1, num_threads=1)
    with pytest.raises(UnsupportedModelError) as refusal:
        load_model(config, lambda stage, fraction: None)
    message = str(refusal.value)
    assert architecture in message and feature in message and "Supported models" in message


def test_visible_keys_is_causal_and_windowed():
    queries = torch.tensor([[2, 5], [0, 9]])  # [B=2, S=2] absolute positions
    keys = torch.arange(10)
    full = visible_keys(queries, keys, None)
    windowed = visible_keys(queries, keys, 3)
    assert full.shape == windowed.shape == (2, 1, 2, 10)
    assert full[0, 0, 1].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]
    # A window of 3 is the query's own token and the two before it, as transformers' sliding_window_overlay.
    assert windowed[0, 0, 1].nonzero().flatten().tolist() == [3, 4, 5]
    assert windowed[1, 0, 0].nonzero().flatten().tolist() == [0]
    assert windowed[1, 0, 1].nonzero().flatten().tolist() == [7, 8, 9]


@pytest.mark.parametrize("softcap", [None, 1.5])
def test_attend_equals_transformers_eager_attention(softcap):
    """Gemma 2's eager attention (its soft-cap and scaling, grouped heads) on the same windowed mask."""
    from types import SimpleNamespace

    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 5, 8, generator=generator) * 3  # [B, Hq, S, D]
    key, value = (torch.randn(2, 2, 7, 8, generator=generator) * 3 for _ in range(2))  # [B, Hkv, K, D]
    mask = visible_keys(torch.tensor([[2, 3, 4, 5, 6], [2, 3, 4, 5, 6]]), torch.arange(7), 4)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    module = SimpleNamespace(num_key_value_groups=2, training=False, head_dim=8)
    expected, _ = eager_attention_forward(module, query, key, value, additive, scaling=0.1, softcap=softcap)
    output = attend(query, key, value, mask, scaling=0.1, softcap=softcap)  # [B, Hq, S, D]
    torch.testing.assert_close(output.transpose(1, 2), expected)
