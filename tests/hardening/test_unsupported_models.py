"""A checkpoint that is not a causal LM (a vision-language model, an encoder, a classifier) is refused from its
config.json, before any weight is read, with one line naming its architecture; Gemma 3's multimodal class, whose
language model the engine serves, is not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workers.model.support import UnsupportedModelError, check_causal_lm

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("config", "phrase"),
    [
        (
            {"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl"},
            "not a causal LM this engine serves yet",
        ),
        ({"architectures": ["BertForMaskedLM"], "model_type": "bert"}, "masked LM"),
        ({"architectures": ["BertModel"], "model_type": "bert"}, "text encoding"),
        ({"architectures": ["LlamaForSequenceClassification"], "model_type": "llama"}, "sequence classification"),
        ({"architectures": ["ViTForImageClassification"], "model_type": "vit"}, "image classification"),
        ({"model_type": "vit"}, "no causal-LM class for model_type 'vit'"),
        ({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"}, "encoder-decoder"),
    ],
)
def test_a_model_that_is_not_a_causal_lm_is_named_from_its_config(config: dict, phrase: str) -> None:
    with pytest.raises(UnsupportedModelError) as refused:
        check_causal_lm(config)
    message = str(refused.value)
    assert message.startswith(f"{(config.get('architectures') or [config['model_type']])[0]} is not supported")
    assert phrase in message and f"model_type {config['model_type']}" in message, message
    assert "docs/models.md, Supported models" in message and len(message) < 500, message


@pytest.mark.parametrize(
    "config",
    [
        {"architectures": ["GlmForCausalLM"], "model_type": "glm"},
        {"architectures": ["Glm4vForConditionalGeneration"], "model_type": "glm4v"},  # served with its images
        {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3"},  # its language model
        {"architectures": ["LLaMAForCausalLM"], "model_type": "llama"},  # an old spelling: loads by model_type
        {"model_type": "llama"},
    ],
)
def test_causal_lms_pass(config: dict) -> None:
    check_causal_lm(config)


def test_remote_code_that_maps_a_causal_lm_is_left_to_transformers() -> None:
    config = {
        "architectures": ["ChatGLMModel"],
        "model_type": "chatglm",
        "auto_map": {"AutoModelForCausalLM": "m.C"},
    }
    check_causal_lm(config, trust_remote_code=True)
    with pytest.raises(UnsupportedModelError):
        check_causal_lm(config, trust_remote_code=False)  # without remote code transformers cannot load it


def test_serving_a_vision_language_checkpoint_ends_with_one_line(glm_checkpoint: Path, tmp_path: Path) -> None:
    """No weights at all: the refusal comes from config.json before any is looked for."""
    checkpoint = tmp_path / "qwen2_vl"
    shutil.copytree(glm_checkpoint, checkpoint)
    (checkpoint / "model.safetensors").unlink()
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(architectures=["Qwen2VLForConditionalGeneration"], model_type="qwen2_vl")
    (checkpoint / "config.json").write_text(json.dumps(config))
    flags = ["--model", str(checkpoint), "--port", "0", "--http-port", "0", "--device", "cpu", "--workers", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "autoglm_rpc.startup.cli", "serve", *flags, "--log-format", "text"],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    last = result.stderr.splitlines()[-1]
    assert "worker 0 cannot load the model: UnsupportedModelError: Qwen2VLForConditionalGeneration" in last, last
    assert "not a causal LM this engine serves yet" in last and "model_type qwen2_vl" in last, last
    assert "Unrecognized configuration class" not in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("worker 0 started") == 1 and "restarting in" not in result.stderr
