"""Checkpoints and tokenizers for the text-layer tests, built once per session; nothing is downloaded.

Besides the project's tiny checkpoints (byte-level BPE, like GLM-4, Llama 3 and Qwen2) this builds tokenizers of
the other families real causal LMs use, so the detokenizer is tested on every decoder shape it must handle:
- a Llama-2-style BPE with byte fallback (`<0xNN>` tokens, Metaspace-like normalizer, a Strip decoder),
- a Unigram with a Metaspace decoder and the space clean-up on,
- a WordPiece with "##" continuations and the space clean-up on.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# Mixed scripts so that characters of two, three and four bytes occur and get split across tokens.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Isn't it nice? We're here, you've seen it!",
    "Héllo wörld! Ça va? Naïve café, crème brûlée, smörgåsbord, façade, jalapeño, Straße.",
    "你好，世界！今天天气很好。我们在服务器上运行语言模型。",
    "こんにちは世界。日本語のテキストも含まれています。 안녕하세요 세계. Привет, мир!",
    "Emoji travel as four bytes: 😀 🚀 🌍 🎉 👍 🤖 — and dashes, “quotes”, ellipses…",
    "def generate(prompt, max_new_tokens=128): return model.generate(prompt, max_new_tokens)",
]
SAMPLE_TEXTS = [
    "Hello world. Isn't it nice ?",
    "你好，世界！今天天气很好。 😀🚀 Straße, crème brûlée",
    "  leading spaces and trailing  ",
    "don 't stop , ok . we 're fine ' quoted '",
    "emoji 🤖👍 then CJK 日本語 then Cyrillic Привет",
    "<|user|> special tokens in text <|assistant|>",
    "",
]
BYTE_TOKENS = [f"<0x{value:02X}>" for value in range(256)]
CHECKPOINT_TEXT_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
)


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    """Texts for tokenizer comparisons: multi-byte characters, clean-up patterns, special-token text, edges."""
    return list(SAMPLE_TEXTS)


@pytest.fixture(scope="session")
def hf_tokenizer() -> Callable[[Path], Any]:
    """A factory: transformers' AutoTokenizer for a directory (cached), the reference the tests compare with."""
    from transformers import AutoTokenizer

    cache: dict[Path, Any] = {}

    def load(path: Path) -> Any:
        if path not in cache:
            cache[path] = AutoTokenizer.from_pretrained(str(path))
        return cache[path]

    return load


@pytest.fixture(scope="session")
def glm_dir(glm_checkpoint: Path) -> Path:
    """The tiny GLM checkpoint: byte-level BPE, a GLM-4-style chat template."""
    return glm_checkpoint


@pytest.fixture(scope="session")
def no_template_dir(llama_checkpoint: Path) -> Path:
    """A tiny Llama checkpoint without a chat template."""
    return llama_checkpoint


@pytest.fixture(scope="session")
def byte_fallback_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tokenizer(
        tmp_path_factory.mktemp("byte_fallback"),
        _byte_fallback_tokenizer(),
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True},
    )


@pytest.fixture(scope="session")
def unigram_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = {
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "clean_up_tokenization_spaces": True,
    }
    return _write_tokenizer(tmp_path_factory.mktemp("unigram"), _unigram_tokenizer(), config)


@pytest.fixture(scope="session")
def wordpiece_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = {
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "clean_up_tokenization_spaces": True,
    }
    return _write_tokenizer(tmp_path_factory.mktemp("wordpiece"), _wordpiece_tokenizer(), config)


@pytest.fixture(scope="session")
def tokenizer_dirs(
    glm_dir: Path, no_template_dir: Path, byte_fallback_dir: Path, unigram_dir: Path, wordpiece_dir: Path
) -> dict[str, Path]:
    """Every tokenizer family under test, by name."""
    return {
        "glm": glm_dir,
        "llama": no_template_dir,
        "byte_fallback": byte_fallback_dir,
        "unigram": unigram_dir,
        "wordpiece": wordpiece_dir,
    }


@pytest.fixture(scope="session")
def make_variant(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """A factory: copy a checkpoint's text files and change them.

    variant(base, config=..., generation_config=..., tokenizer_config=..., chat_template=..., remove=...)
    merges the given dicts into the JSON files (a None value deletes the key), writes chat_template.jinja when
    `chat_template` is a string, and deletes the files named in `remove`.
    """

    def variant(
        base: Path,
        *,
        config: dict[str, Any] | None = None,
        generation_config: dict[str, Any] | None = None,
        tokenizer_config: dict[str, Any] | None = None,
        chat_template: str | None = None,
        remove: tuple[str, ...] = (),
    ) -> Path:
        target = tmp_path_factory.mktemp("variant")
        for name in CHECKPOINT_TEXT_FILES:
            if (base / name).is_file():
                shutil.copy(base / name, target / name)
        for name, updates in (
            ("config.json", config),
            ("generation_config.json", generation_config),
            ("tokenizer_config.json", tokenizer_config),
        ):
            if updates is not None:
                _merge_json(target / name, updates)
        if chat_template is not None:
            (target / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
        for name in remove:
            (target / name).unlink(missing_ok=True)
        return target

    return variant


def _merge_json(path: Path, updates: dict[str, Any]) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for key, value in updates.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _write_tokenizer(directory: Path, tokenizer: Tokenizer, config: dict[str, Any]) -> Path:
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def _byte_fallback_tokenizer() -> Tokenizer:
    """Llama-2 style: BPE over "▁"-joined text, bytes of unknown characters as <0xNN> tokens."""
    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    draft = Tokenizer(models.BPE())
    draft.normalizer = normalizer
    # A small alphabet leaves most non-ASCII characters to the byte tokens.
    draft.train_from_iterator(
        CORPUS * 4, trainers.BpeTrainer(vocab_size=400, min_frequency=1, limit_alphabet=90, show_progress=False)
    )
    trained = json.loads(draft.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {token: index for index, token in enumerate(specials + BYTE_TOKENS)}
    for token, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in trained["merges"]]
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    )
    tokenizer.normalizer = normalizer
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tokenizer


def _unigram_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return tokenizer


def _wordpiece_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"], show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    return tokenizer
