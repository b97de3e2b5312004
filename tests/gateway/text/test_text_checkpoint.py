"""CheckpointFacts: config.json and generation_config.json read without transformers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from autoglm_rpc.text import CheckpointFileError, GenerationDefaults, read_checkpoint_facts


def test_tiny_glm_facts(glm_dir: Path) -> None:
    facts = read_checkpoint_facts(glm_dir)
    assert facts.architecture == "GlmForCausalLM"
    assert facts.model_type == "glm"
    assert facts.max_position_embeddings == 512
    assert facts.eos_token_ids == (0,)
    assert facts.pad_token_id == 0
    assert facts.bos_token_id is None
    assert facts.vocab_size == 640
    assert facts.dtype == "float32"
    assert facts.quantization is None
    # generation_config.json: do_sample false, max_new_tokens 64.
    assert facts.defaults == GenerationDefaults(do_sample=False, temperature=0.0, max_new_tokens=64)


def test_llama_facts(no_template_dir: Path) -> None:
    facts = read_checkpoint_facts(no_template_dir)
    assert facts.architecture == "LlamaForCausalLM"
    assert facts.model_type == "llama"


def test_sampling_defaults_follow_generate(glm_dir: Path, make_variant: Callable[..., Path]) -> None:
    path = make_variant(
        glm_dir,
        generation_config={"do_sample": True, "temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.1},
    )
    defaults = read_checkpoint_facts(path).defaults
    assert defaults.do_sample
    assert defaults.temperature == pytest.approx(0.6)
    assert defaults.top_p == pytest.approx(0.9)
    assert defaults.top_k == 50  # generate()'s default when generation_config leaves it unset
    assert defaults.repetition_penalty == pytest.approx(1.1)


def test_greedy_checkpoint_has_zero_temperature_whatever_it_lists(
    glm_dir: Path, make_variant: Callable[..., Path]
) -> None:
    path = make_variant(glm_dir, generation_config={"do_sample": False, "temperature": 0.7, "top_k": 5})
    defaults = read_checkpoint_facts(path).defaults
    assert defaults.temperature == 0.0
    assert defaults.top_k == 5


def test_eos_ids_prefer_generation_config_and_accept_lists(
    glm_dir: Path, make_variant: Callable[..., Path]
) -> None:
    path = make_variant(glm_dir, generation_config={"eos_token_id": [0, 2, 3, 2]}, config={"eos_token_id": 1})
    assert read_checkpoint_facts(path).eos_token_ids == (0, 2, 3)
    path = make_variant(glm_dir, generation_config={"eos_token_id": None}, config={"eos_token_id": [1, 2]})
    assert read_checkpoint_facts(path).eos_token_ids == (1, 2)


def test_missing_generation_config_gives_generate_defaults(
    glm_dir: Path, make_variant: Callable[..., Path]
) -> None:
    facts = read_checkpoint_facts(make_variant(glm_dir, remove=("generation_config.json",)))
    assert facts.defaults == GenerationDefaults()
    assert facts.eos_token_ids == (0,)  # from config.json


@pytest.mark.parametrize(
    "config",
    [
        {"max_position_embeddings": None, "n_positions": 1024},
        {"max_position_embeddings": None, "seq_length": 1024},
        {"max_position_embeddings": None, "text_config": {"max_position_embeddings": 1024}},
    ],
    ids=["n_positions", "seq_length", "text_config"],
)
def test_context_length_fallbacks(glm_dir: Path, make_variant: Callable[..., Path], config: dict) -> None:
    assert read_checkpoint_facts(make_variant(glm_dir, config=config)).max_position_embeddings == 1024


def test_context_length_from_tokenizer_config_last(glm_dir: Path, make_variant: Callable[..., Path]) -> None:
    path = make_variant(
        glm_dir, config={"max_position_embeddings": None}, tokenizer_config={"model_max_length": 300}
    )
    assert read_checkpoint_facts(path).max_position_embeddings == 300
    path = make_variant(glm_dir, config={"max_position_embeddings": None}, remove=("tokenizer_config.json",))
    assert read_checkpoint_facts(path).max_position_embeddings is None


def test_quantized_checkpoint(glm_dir: Path, make_variant: Callable[..., Path]) -> None:
    path = make_variant(glm_dir, config={"quantization_config": {"quant_method": "bitsandbytes"}})
    assert read_checkpoint_facts(path).quantization == "bitsandbytes"


def test_missing_config_is_a_checkpoint_error(glm_dir: Path, make_variant: Callable[..., Path]) -> None:
    with pytest.raises(CheckpointFileError, match=r"config\.json"):
        read_checkpoint_facts(make_variant(glm_dir, remove=("config.json",)))


def test_config_that_is_not_an_object_is_a_checkpoint_error(
    glm_dir: Path, make_variant: Callable[..., Path]
) -> None:
    path = make_variant(glm_dir)
    (path / "config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(CheckpointFileError, match="JSON object"):
        read_checkpoint_facts(path)
