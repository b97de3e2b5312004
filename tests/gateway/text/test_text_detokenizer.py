"""IncrementalDetokenizer: deltas plus flush always reassemble decode(all ids), with whole characters only.

Random-weight models emit arbitrary id sequences, so most cases here are random: uniform ids (invalid UTF-8 byte
runs, stray continuation bytes, special and unknown ids), and real text cut up and perturbed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoglm_rpc.text import IncrementalDetokenizer, TextTokenizer

FAMILIES = ("glm", "byte_fallback", "unigram", "wordpiece")
REPLACEMENT = "\ufffd"


def _stream(
    tokenizer: TextTokenizer, ids: Sequence[int], chunks: Sequence[int], skip: bool
) -> tuple[list[str], str]:
    """Push `ids` in pieces of the given sizes (cycled); return the push deltas and the flush."""
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip)
    deltas, start, index = [], 0, 0
    while start < len(ids):
        size = chunks[index % len(chunks)]
        deltas.append(detokenizer.push(ids[start : start + size]))
        start, index = start + size, index + 1
    return deltas, detokenizer.flush()


def _assert_invariant(tokenizer: TextTokenizer, ids: Sequence[int], chunks: Sequence[int], skip: bool) -> None:
    deltas, tail = _stream(tokenizer, ids, chunks, skip)
    expected = tokenizer.decode(ids, skip_special_tokens=skip)
    assert "".join(deltas) + tail == expected, (list(ids), deltas, tail)
    # A delta never ends inside a character: held-back bytes only ever come out in flush.
    assert not any(delta.endswith(REPLACEMENT) for delta in deltas), deltas


@pytest.mark.parametrize("skip", [True, False], ids=["skip_special", "keep_special"])
@pytest.mark.parametrize("family", FAMILIES)
def test_random_ids_reassemble_exactly(family: str, skip: bool, tokenizer_dirs: dict[str, Path]) -> None:
    tokenizer = TextTokenizer.from_dir(tokenizer_dirs[family])
    for seed in range(150):
        rng = random.Random(seed)
        # A few ids past the vocabulary too: decode ignores them, and so must the stream.
        ids = [rng.randrange(tokenizer.vocab_size + 3) for _ in range(rng.randint(0, 50))]
        chunks = [rng.choice([1, 1, 1, 2, 3, 5]) for _ in range(4)]
        _assert_invariant(tokenizer, ids, chunks, skip)


@pytest.mark.parametrize("family", FAMILIES)
def test_perturbed_real_text_reassembles_exactly(
    family: str, tokenizer_dirs: dict[str, Path], sample_texts: list[str]
) -> None:
    """Real text with tokens dropped (splitting characters), duplicated, and special tokens interleaved."""
    tokenizer = TextTokenizer.from_dir(tokenizer_dirs[family])
    specials = sorted(tokenizer.special_token_ids)
    for seed in range(120):
        rng = random.Random(seed)
        ids: list[int] = []
        for token_id in tokenizer.encode(" ".join(rng.sample(sample_texts, 3)), add_special_tokens=False):
            roll = rng.random()
            if roll < 0.08:
                continue
            ids.extend([token_id, token_id] if roll < 0.14 else [token_id])
            if roll > 0.9:
                ids.append(rng.choice(specials))
        _assert_invariant(tokenizer, ids, [rng.choice([1, 2, 4])], skip=seed % 2 == 0)


@settings(max_examples=150, deadline=None)
@given(ids=st.lists(st.integers(min_value=0, max_value=700), max_size=40), skip=st.booleans())
def test_hypothesis_glm(glm_dir: Path, ids: list[int], skip: bool) -> None:
    _assert_invariant(_cached(glm_dir), ids, [1], skip)


@settings(max_examples=150, deadline=None)
@given(ids=st.lists(st.integers(min_value=0, max_value=700), max_size=40), chunk=st.integers(1, 4))
def test_hypothesis_byte_fallback(byte_fallback_dir: Path, ids: list[int], chunk: int) -> None:
    _assert_invariant(_cached(byte_fallback_dir), ids, [chunk], True)


@pytest.mark.parametrize("character", ["é", "你", "😀", "🤖", "龍"])
def test_split_character_is_held_until_complete(glm_dir: Path, character: str) -> None:
    tokenizer = _cached(glm_dir)
    ids = tokenizer.encode(character + "a")
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.push([token_id]) for token_id in ids]
    assert "".join(deltas) == character + "a"
    assert all(delta in ("", character, "a", character + "a") for delta in deltas), deltas
    assert detokenizer.flush() == ""


def test_some_characters_really_are_split(glm_dir: Path) -> None:
    """Keeps the test above meaningful: the tiny vocabulary spells these characters with several tokens."""
    tokenizer = _cached(glm_dir)
    assert all(len(tokenizer.encode(character)) > 1 for character in ("😀", "龍"))


def test_byte_fallback_character_is_held_past_its_last_byte(byte_fallback_dir: Path) -> None:
    tokenizer = _cached(byte_fallback_dir)
    byte_ids = [tokenizer.token_to_id(f"<0x{value:02X}>") for value in "龍".encode()]
    detokenizer = IncrementalDetokenizer(tokenizer)
    # Even the complete character waits: a following byte token could still turn the run invalid.
    assert [detokenizer.push([token_id]) for token_id in byte_ids] == ["", "", ""]
    assert detokenizer.flush() == tokenizer.decode(byte_ids)


def test_byte_fallback_run_spoiled_by_a_later_byte(byte_fallback_dir: Path) -> None:
    """ "é" (C3 A9) followed by a stray A9 decodes as three replacement characters: "é" must never be sent."""
    tokenizer = _cached(byte_fallback_dir)
    ids = [tokenizer.token_to_id(token) for token in ("<0xC3>", "<0xA9>", "<0xA9>")]
    ids += tokenizer.encode("x", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.push([token_id]) for token_id in ids]
    assert "é" not in "".join(deltas)
    assert "".join(deltas) + detokenizer.flush() == tokenizer.decode(ids)
    assert REPLACEMENT * 3 in tokenizer.decode(ids)


def test_invalid_byte_is_sent_once_text_follows(glm_dir: Path) -> None:
    tokenizer = _cached(glm_dir)
    stray = tokenizer.token_to_id("©")  # the byte-level symbol of the lone continuation byte 0xA9
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.push([stray]) == ""
    assert detokenizer.push(tokenizer.encode("a")) == REPLACEMENT + "a"


def test_incomplete_character_at_the_end_comes_out_in_flush(glm_dir: Path) -> None:
    tokenizer = _cached(glm_dir)
    lead_byte = tokenizer.token_to_id("ä")  # the byte-level symbol of 0xE4, a three-byte lead
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.push(tokenizer.encode("ok")) == "ok"
    assert detokenizer.push([lead_byte]) == ""
    assert detokenizer.flush() == REPLACEMENT


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens(glm_dir: Path, skip: bool) -> None:
    tokenizer = _cached(glm_dir)
    ids = tokenizer.encode("<|user|>hi<|assistant|>你好<|endoftext|>")
    deltas, tail = _stream(tokenizer, ids, [1], skip)
    expected = "hi你好" if skip else "<|user|>hi<|assistant|>你好<|endoftext|>"
    assert "".join(deltas) + tail == expected


@pytest.mark.parametrize("family", ["unigram", "wordpiece"])
def test_space_clean_up_streams(family: str, tokenizer_dirs: dict[str, Path]) -> None:
    tokenizer = _cached(tokenizer_dirs[family])
    ids = tokenizer.encode("don 't stop , ok . we 're here ' quoted ' !", add_special_tokens=False)
    deltas, tail = _stream(tokenizer, ids, [1], True)
    assert "".join(deltas) + tail == tokenizer.decode(ids)
    assert " ," not in tokenizer.decode(ids)


def test_decoder_that_rewrites_earlier_text_is_sent_at_the_end(
    glm_dir: Path, make_variant: Callable[..., Path]
) -> None:
    path = make_variant(glm_dir)
    data = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    strip = {"type": "Strip", "content": " ", "start": 0, "stop": 1}
    data["decoder"] = {"type": "Sequence", "decoders": [data["decoder"], strip]}
    (path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    tokenizer = TextTokenizer.from_dir(path)
    assert not tokenizer.decoder_rules.is_streamable
    ids = tokenizer.encode("hello world ")
    deltas, tail = _stream(tokenizer, ids, [1], True)
    assert deltas == [""] * len(ids)
    assert tail == tokenizer.decode(ids)


def test_work_per_token_is_bounded_by_the_window(glm_dir: Path, sample_texts: list[str]) -> None:
    tokenizer = _cached(glm_dir)
    ids = tokenizer.encode(" ".join(sample_texts) * 40)
    assert len(ids) > 2000
    detokenizer = IncrementalDetokenizer(tokenizer)
    longest = 0
    decode_raw = tokenizer.decode_raw

    def measured(window: Sequence[int], skip_special_tokens: bool = True) -> str:
        nonlocal longest
        longest = max(longest, len(window))
        return decode_raw(window, skip_special_tokens)

    tokenizer.decode_raw = measured  # type: ignore[method-assign]
    try:
        text = "".join(detokenizer.push([token_id]) for token_id in ids)
    finally:
        del tokenizer.decode_raw
    assert longest <= 8
    assert text + detokenizer.flush() == tokenizer.decode(ids)


def test_push_after_flush_is_an_error(glm_dir: Path) -> None:
    detokenizer = IncrementalDetokenizer(_cached(glm_dir))
    detokenizer.push([5])
    detokenizer.flush()
    assert detokenizer.flush() == ""
    with pytest.raises(ValueError, match="after flush"):
        detokenizer.push([5])


_TOKENIZERS: dict[Path, TextTokenizer] = {}


def _cached(path: Path) -> TextTokenizer:
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = TextTokenizer.from_dir(path)
    return _TOKENIZERS[path]


def test_byte_level_windows_need_no_context(tokenizer_dirs: dict[str, Path]) -> None:
    """A ByteLevel decoder (the GLM test tokenizer's) is context-free: the detokenizer decodes only the new ids,
    and the invariant tests above run that path; the other families keep their context window."""
    rules = {family: _cached(tokenizer_dirs[family]).decoder_rules for family in FAMILIES}
    assert rules["glm"].is_context_free
    assert not any(rules[family].is_context_free for family in FAMILIES if family != "glm")
