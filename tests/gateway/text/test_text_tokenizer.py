"""TextTokenizer gives the ids and text transformers' AutoTokenizer gives for the same checkpoint directory."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autoglm_rpc.text import CheckpointFileError, TextTokenizer

FAMILIES = ("glm", "llama", "byte_fallback", "unigram", "wordpiece")


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_matches_transformers(
    family: str, tokenizer_dirs: dict[str, Path], hf_tokenizer: Callable[[Path], Any], sample_texts: list[str]
) -> None:
    path = tokenizer_dirs[family]
    ours, reference = TextTokenizer.from_dir(path), hf_tokenizer(path)
    for text in sample_texts:
        for add_special_tokens in (True, False):
            assert ours.encode(text, add_special_tokens) == reference.encode(
                text, add_special_tokens=add_special_tokens
            ), (text, add_special_tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_matches_transformers(
    family: str, tokenizer_dirs: dict[str, Path], hf_tokenizer: Callable[[Path], Any], sample_texts: list[str]
) -> None:
    path = tokenizer_dirs[family]
    ours, reference = TextTokenizer.from_dir(path), hf_tokenizer(path)
    rng = random.Random(7)
    id_lists = [ours.encode(text) for text in sample_texts]
    id_lists += [[rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 40))] for _ in range(40)]
    for ids in id_lists:
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("family", FAMILIES)
def test_vocabulary_facts_match_transformers(
    family: str, tokenizer_dirs: dict[str, Path], hf_tokenizer: Callable[[Path], Any]
) -> None:
    path = tokenizer_dirs[family]
    ours, reference = TextTokenizer.from_dir(path), hf_tokenizer(path)
    assert ours.vocab_size == len(reference)
    assert ours.special_token_ids == frozenset(reference.all_special_ids)
    expected_eos = () if reference.eos_token_id is None else (reference.eos_token_id,)
    assert ours.eos_token_ids == expected_eos


def test_round_trip_of_multibyte_text(glm_dir: Path) -> None:
    tokenizer = TextTokenizer.from_dir(glm_dir)
    text = "你好，世界！ 😀🚀 Straße — “quotes”…"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_config_special_token_missing_from_tokenizer_json_is_added(
    glm_dir: Path, make_variant: Callable[..., Path], hf_tokenizer: Callable[[Path], Any]
) -> None:
    bos = {"__type": "AddedToken", "content": "<s>", "lstrip": False, "rstrip": False, "normalized": False}
    path = make_variant(glm_dir, tokenizer_config={"bos_token": bos})
    ours, reference = TextTokenizer.from_dir(path), hf_tokenizer(path)
    text = "hi <s> there<s>"
    assert ours.encode(text) == reference.encode(text)
    assert ours.decode(ours.encode(text), skip_special_tokens=True) == reference.decode(
        reference.encode(text), skip_special_tokens=True
    )
    assert ours.bos_token_ids == (reference.bos_token_id,)
    assert ours.special_token_ids == frozenset(reference.all_special_ids)
    assert ours.vocab_size == len(reference)


@pytest.mark.parametrize("family", ["glm", "byte_fallback", "unigram"])
@pytest.mark.parametrize("flags", [{"add_bos_token": True, "add_eos_token": True}, {"add_bos_token": False}])
def test_bos_eos_flags_defer_to_tokenizer_json_as_in_transformers(
    family: str,
    flags: dict[str, bool],
    tokenizer_dirs: dict[str, Path],
    make_variant: Callable[..., Path],
    hf_tokenizer: Callable[[Path], Any],
) -> None:
    """transformers 5 ignores add_bos_token / add_eos_token when tokenizer.json exists; so do we."""
    path = make_variant(tokenizer_dirs[family], tokenizer_config={"bos_token": "<|system|>", **flags})
    ours, reference = TextTokenizer.from_dir(path), hf_tokenizer(path)
    for text in ("Hello world", "", "你好 😀"):
        assert ours.encode(text) == reference.encode(text)


def test_missing_tokenizer_json_says_what_is_needed(glm_dir: Path, make_variant: Callable[..., Path]) -> None:
    path = make_variant(glm_dir, remove=("tokenizer.json",))
    with pytest.raises(CheckpointFileError, match=r"tokenizer\.json"):
        TextTokenizer.from_dir(path)


def test_malformed_tokenizer_config_is_a_checkpoint_error(
    glm_dir: Path, make_variant: Callable[..., Path]
) -> None:
    path = make_variant(glm_dir)
    (path / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointFileError, match=r"tokenizer_config\.json"):
        TextTokenizer.from_dir(path)


def test_tokenizer_config_is_optional(glm_dir: Path, make_variant: Callable[..., Path]) -> None:
    tokenizer = TextTokenizer.from_dir(
        make_variant(glm_dir, remove=("tokenizer_config.json", "chat_template.jinja"))
    )
    assert tokenizer.decode(tokenizer.encode("hello")) == "hello"
    assert tokenizer.eos_token_ids == ()
    assert not tokenizer.has_chat_template


def test_model_max_length(glm_dir: Path) -> None:
    assert TextTokenizer.from_dir(glm_dir).model_max_length == 512
