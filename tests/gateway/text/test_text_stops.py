"""StopSequenceMatcher: matches across deltas, holds back only what could still become a stop."""

from __future__ import annotations

import random

import pytest

from autoglm_rpc.text import StopSequenceMatcher


def _feed_all(matcher: StopSequenceMatcher, pieces: list[str]) -> tuple[list[str], str | None]:
    """Feed every piece, then flush; return the emitted pieces and the matched stop."""
    emitted, matched = [], None
    for piece in pieces:
        text, stop = matcher.feed(piece)
        emitted.append(text)
        matched = matched or stop
    text, stop = matcher.flush()
    emitted.append(text)
    return emitted, matched or stop


def _reference(text: str, stops: list[str], include: bool) -> tuple[str, str | None]:
    """The first stop to complete reading left to right (ties: the longest); the output up to it."""
    for end in range(1, len(text) + 1):
        ending_here = [stop for stop in stops if text[:end].endswith(stop)]
        if ending_here:
            stop = max(ending_here, key=len)
            return text[: end if include else end - len(stop)], stop
    return text, None


def test_stop_split_across_deltas() -> None:
    matcher = StopSequenceMatcher(["STOP"])
    assert matcher.feed("abc ST") == ("abc ", None)
    assert matcher.feed("O") == ("", None)
    assert matcher.feed("P and more") == ("", "STOP")
    assert matcher.match is not None and (matcher.match.start, matcher.match.end) == (4, 8)
    assert matcher.feed("ignored") == ("", None)
    assert matcher.flush() == ("", None)


def test_holds_back_only_a_possible_start() -> None:
    matcher = StopSequenceMatcher(["STOP"])
    assert matcher.feed("xxS") == ("xx", None)
    assert matcher.feed("Tx") == ("STx", None)  # "STx" can no longer become "STOP"
    assert matcher.feed("yS") == ("y", None)
    assert matcher.flush() == ("S", None)  # generation ended: nothing is held for ever


def test_no_hold_back_when_the_tail_cannot_start_a_stop() -> None:
    matcher = StopSequenceMatcher(["</answer>"])
    assert matcher.feed("plain text") == ("plain text", None)


def test_failed_candidate_restarts_inside_itself() -> None:
    matcher = StopSequenceMatcher(["aab"])
    emitted, matched = _feed_all(matcher, list("xaaab"))
    assert ("".join(emitted), matched) == ("xa", "aab")


def test_first_completed_stop_wins_over_an_earlier_starting_one() -> None:
    emitted, matched = _feed_all(StopSequenceMatcher(["abcd", "bc"]), ["abcd"])
    assert ("".join(emitted), matched) == ("a", "bc")


def test_earliest_of_several_stops_in_one_delta() -> None:
    matcher = StopSequenceMatcher(["world", "lo", "zzz"])
    assert matcher.feed("hello world") == ("hel", "lo")


def test_longer_stop_wins_a_tie() -> None:
    assert StopSequenceMatcher(["b", "ab"]).feed("xab") == ("x", "ab")


def test_include_stop_sequence() -> None:
    matcher = StopSequenceMatcher(["\n\n"], include_stop_sequence=True)
    assert matcher.feed("para one\n") == ("para one", None)
    assert matcher.feed("\npara two") == ("\n\n", "\n\n")


def test_multibyte_stop_sequence() -> None:
    emitted, matched = _feed_all(StopSequenceMatcher(["世界"]), ["你好，世", "界！"])
    assert ("".join(emitted), matched) == ("你好，", "世界")


def test_no_stops_passes_text_through() -> None:
    matcher = StopSequenceMatcher([])
    assert matcher.feed("anything") == ("anything", None)
    assert matcher.flush() == ("", None)


def test_empty_stop_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        StopSequenceMatcher(["ok", ""])


def test_duplicates_are_harmless() -> None:
    assert StopSequenceMatcher(["x", "x"]).feed("abxc") == ("ab", "x")


@pytest.mark.parametrize("include", [False, True])
def test_any_cut_of_the_text_gives_the_reference_answer(include: bool) -> None:
    for seed in range(600):
        rng = random.Random(seed)
        text = "".join(rng.choice("aab c世") for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice("ab c世") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        emitted, matched = _feed_all(StopSequenceMatcher(stops, include_stop_sequence=include), pieces)
        assert ("".join(emitted), matched) == _reference(text, stops, include), (text, stops, pieces)


def test_held_back_text_is_the_longest_possible_stop_start() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        stops = ["".join(rng.choice("ab世") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        matcher, fed, sent = StopSequenceMatcher(stops), "", ""
        while not matcher.is_stopped and len(fed) < 30:
            piece = "".join(rng.choice("ab世") for _ in range(rng.randint(0, 3)))
            text, matched = matcher.feed(piece)
            fed, sent = fed + piece, sent + text
            if matched is None:
                held = max(
                    (
                        size
                        for size in range(len(fed) + 1)
                        if any(s.startswith(fed[len(fed) - size :]) for s in stops)
                    ),
                    default=0,
                )
                assert sent == fed[: len(fed) - held], (stops, fed, sent)
