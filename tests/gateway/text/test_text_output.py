"""TextStream: detokenizer and stop matcher together, with the token count pinned to the stop."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from autoglm_rpc.text import TextStream, TextTokenizer


@pytest.fixture(scope="module")
def tokenizer(glm_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_dir(glm_dir)


def _first_index_decoding_to(tokenizer: TextTokenizer, ids: list[int], text: str) -> int:
    """The smallest n such that decode(ids[:n]) contains `text`."""
    return next(n for n in range(len(ids) + 1) if text in tokenizer.decode(ids[:n]))


def test_without_stops_the_text_is_the_decode(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("你好，世界！ 😀 done")
    stream = TextStream(tokenizer)
    pieces = [stream.push(token_id) for token_id in ids]
    pieces.append(stream.flush())
    assert "".join(pieces) == stream.text == tokenizer.decode(ids)
    assert stream.token_ids == tuple(ids) and stream.num_tokens == len(ids)
    assert stream.stop_sequence is None and not stream.is_stopped


def test_without_stops_deltas_of_any_size_give_the_decode(tokenizer: TextTokenizer) -> None:
    """Whole deltas go through the detokenizer at once: however the ids are cut, the text is the same."""
    ids = tokenizer.encode("你好，世界！ 😀 done and more words")
    rng = random.Random(5)
    for _ in range(5):
        stream, start, pieces = TextStream(tokenizer), 0, []
        while start < len(ids):
            size = rng.randint(1, 4)
            pieces.append(stream.push(ids[start : start + size]))
            start += size
        pieces.append(stream.flush())
        assert "".join(pieces) == tokenizer.decode(ids) and stream.token_ids == tuple(ids)


def test_stop_sequence_cuts_text_and_tokens(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("你好，世界！今天天气很好。")
    stream = TextStream(tokenizer, ["世界"])
    pieces = [stream.push(token_id) for token_id in ids]
    pieces.append(stream.flush())
    assert "".join(pieces) == stream.text == "你好，"
    assert stream.stop_sequence == "世界" and stream.is_stopped
    expected_count = _first_index_decoding_to(tokenizer, ids, "世界")
    assert stream.token_ids == tuple(ids[:expected_count])


def test_stop_inside_a_multi_token_push(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("alpha beta STOP gamma delta")
    stream = TextStream(tokenizer, ["STOP"], include_stop_sequence=True)
    assert stream.push(ids) == "alpha beta STOP"
    assert stream.num_tokens == _first_index_decoding_to(tokenizer, ids, "STOP")
    assert stream.push(ids) == ""  # stopped: later tokens are ignored
    assert stream.flush() == ""
    assert stream.num_tokens == _first_index_decoding_to(tokenizer, ids, "STOP")


def test_stop_completed_by_the_flush(tokenizer: TextTokenizer) -> None:
    """A stop that only the held-back bytes complete: an incomplete character becomes U+FFFD at the end."""
    lead_byte = tokenizer.token_to_id("ä")  # 0xE4, the lead of a three-byte character
    ids = [*tokenizer.encode("ok"), lead_byte]
    stream = TextStream(tokenizer, ["\ufffd"])
    assert stream.push(ids) == "ok"
    assert stream.flush() == ""
    assert stream.stop_sequence == "\ufffd"
    assert stream.token_ids == tuple(ids)


def test_held_stop_prefix_is_released_at_the_end(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("the end <")
    stream = TextStream(tokenizer, ["</answer>"])
    streamed = "".join(stream.push(token_id) for token_id in ids)
    assert not streamed.endswith("<")
    assert streamed + stream.flush() == "the end <"


def test_special_tokens_kept_when_asked(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("hi<|endoftext|>")
    kept = TextStream(tokenizer, skip_special_tokens=False)
    assert kept.push(ids) + kept.flush() == "hi<|endoftext|>"
    skipped = TextStream(tokenizer)
    assert skipped.push(ids) + skipped.flush() == "hi"


def test_random_ids_with_stops_match_decode_then_cut(tokenizer: TextTokenizer) -> None:
    for seed in range(150):
        rng = random.Random(seed)
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randint(0, 40))]
        stops = [rng.choice(["a", "e ", "\ufffd", "th", "。", "😀"]) for _ in range(rng.randint(0, 2))]
        stream = TextStream(tokenizer, stops)
        text = "".join(stream.push(ids[start : start + 3]) for start in range(0, len(ids), 3)) + stream.flush()
        decoded = tokenizer.decode(stream.token_ids)
        if stream.stop_sequence is None:
            assert text == decoded and stream.token_ids == tuple(ids)
        else:
            assert text == decoded[: decoded.index(stream.stop_sequence)]
            # The kept tokens end with the one that completed the stop: one fewer does not match.
            shorter = TextStream(tokenizer, stops)
            shorter.push(stream.token_ids[:-1])
            assert shorter.stop_sequence is None


def test_push_after_flush_is_an_error(tokenizer: TextTokenizer) -> None:
    stream = TextStream(tokenizer)
    stream.push(5)
    stream.flush()
    assert stream.flush() == ""
    with pytest.raises(ValueError, match="after flush"):
        stream.push(5)


def test_empty_stop_sequence_is_rejected(tokenizer: TextTokenizer) -> None:
    with pytest.raises(ValueError, match="empty"):
        TextStream(tokenizer, [""])
