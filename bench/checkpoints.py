"""The checkpoints the benchmark serves: saved like any Hugging Face checkpoint, so every system loads the same
weights through its normal path (the engine and the service through `workers.model.loader`).

`tiny_checkpoint` is the demo model (`workers.model.checkpoints.DEMO_SPEC`, a 4-layer GLM). `glm4_9b_checkpoint` is
transformers' `GlmConfig()` defaults (the GLM-4-9B shape, 18.8 GB in bf16) with random weights initialised
directly on the device, plus a tiny trained tokenizer: its vocabulary is far smaller than the model's 151,552
ids, which is fine because prompts are random ids below the tokenizer's size, and the gateway's detokenizer
skips ids it does not know. Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.model.checkpoints import (
    CHAT_TEMPLATE,
    DEMO_SPEC,
    EOS_TOKEN,
    ROLE_TOKENS,
    build_checkpoint,
    train_tokenizer,
)
from workers.protocol import RANDOM_WEIGHTS_MARKER

logger = logging.getLogger(__name__)

# Ids below this are the tokenizer's special tokens (EOS and the role tokens); prompts avoid them.
FIRST_ORDINARY_ID = 1 + len(ROLE_TOKENS)
# The tokenizer trained for the GLM-4-9B shape; the corpus yields fewer merges than this anyway.
_GPU_TOKENIZER_VOCAB = 4096


@dataclass(slots=True)
class BenchCheckpoint:
    """A saved checkpoint and the facts the workload needs; `model` is the in-memory copy when one was kept
    (whoever uses it last sets it to None so the memory can go)."""

    path: Path
    tokenizer_vocab: int
    model_vocab: int
    description: dict[str, Any]
    model: Any = None

    @property
    def token_range(self) -> tuple[int, int]:
        """Prompt ids every system accepts: ordinary tokens the tokenizer knows (high exclusive)."""
        return FIRST_ORDINARY_ID, min(self.tokenizer_vocab, self.model_vocab)


def tiny_checkpoint(path: str | Path) -> BenchCheckpoint:
    """The demo checkpoint (float32 weights) built at `path`."""
    return existing_checkpoint(build_checkpoint(path, DEMO_SPEC), "demo (workers.model.checkpoints.DEMO_SPEC)")


def existing_checkpoint(path: str | Path, name: str | None = None) -> BenchCheckpoint:
    """A checkpoint directory that is already there (config.json and tokenizer.json), used as it is."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    description = {"name": name or str(path), **_shape(config)}
    return BenchCheckpoint(path, _tokenizer_vocab(path), config["vocab_size"], description)


def glm4_9b_checkpoint(path: str | Path, device: str = "cuda", dtype_name: str = "bfloat16") -> BenchCheckpoint:
    """Random-init `GlmConfig()` (GLM-4-9B shape) built on `device` in `dtype_name`, saved to `path`.

    The model stays in memory (`BenchCheckpoint.model`, eval mode) so the baselines can use it without a reload.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, GlmConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = GlmConfig()
    eos = config.eos_token_id
    tokenizer_vocab = _save_tokenizer(path, config.max_position_embeddings)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype_name))
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=config.pad_token_id, do_sample=False, max_new_tokens=128
    )
    logger.info("saving the random GLM-4-9B-shaped checkpoint to %s", path)
    model.save_pretrained(path, safe_serialization=True)
    (path / RANDOM_WEIGHTS_MARKER).write_text(json.dumps({"random_weights": True, "spec": "GlmConfig()"}))
    num_params = sum(p.numel() for p in model.parameters())
    description = {"name": "GLM-4-9B shape (transformers GlmConfig() defaults), random init", **_shape(config)}
    description |= {"num_parameters": num_params, "dtype": dtype_name}
    return BenchCheckpoint(path, tokenizer_vocab, config.vocab_size, description, model)


def _save_tokenizer(path: Path, max_length: int) -> int:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(_GPU_TOKENIZER_VOCAB),
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return len(tokenizer)


def _tokenizer_vocab(path: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


def _shape(config: Any) -> dict[str, Any]:
    get = config.get if isinstance(config, dict) else lambda name: getattr(config, name, None)
    names = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    return {name: get(name) for name in (*names, "vocab_size")}
