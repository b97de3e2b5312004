"""Stop sequences matched on decoded text as it streams, across token and delta boundaries.

Semantics (the same however the text is cut into deltas, so a stream and a unary call agree): reading the text
left to right, the first stop sequence to be completed wins; when two complete at the same character, the longer
one (which starts earlier) wins. This is how TGI, vLLM and transformers' StopStringCriteria decide, since each of
them checks after every token. The matcher holds back only the longest tail of the text that could still grow
into a stop sequence; once a stop matches, nothing more is emitted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StopMatch:
    """A matched stop sequence and where it lies in all the text fed so far ([start, end) character offsets)."""

    stop: str
    start: int
    end: int


class StopSequenceMatcher:
    """Finds the first stop sequence in text fed piece by piece. One instance per request; not thread-safe."""

    def __init__(self, stop_sequences: Iterable[str], include_stop_sequence: bool = False) -> None:
        """Raises ValueError for an empty stop sequence (it would match before any text)."""
        stops = tuple(dict.fromkeys(stop_sequences))  # drop duplicates, keep the caller's order
        if any(not stop for stop in stops):
            raise ValueError("stop sequences must not be empty")
        self._stops = stops
        self._include_stop_sequence = include_stop_sequence
        # Every proper prefix of every stop: the tails worth holding back.
        self._prefixes = frozenset(stop[:length] for stop in stops for length in range(1, len(stop)))
        self._longest = max((len(stop) for stop in stops), default=0)
        self._buffer = ""  # text fed but not emitted: a tail that may begin a stop sequence
        self._buffer_start = 0  # offset of the buffer's first character in all the text fed
        self._match: StopMatch | None = None
        self._is_flushed = False

    @property
    def has_stops(self) -> bool:
        """False when there is nothing to match: `feed` would return its text unchanged."""
        return bool(self._stops)

    @property
    def match(self) -> StopMatch | None:
        """The stop that ended the text, once one has matched."""
        return self._match

    @property
    def is_stopped(self) -> bool:
        """True once a stop has matched or the matcher was flushed: it emits nothing more."""
        return self._match is not None or self._is_flushed

    def feed(self, text: str) -> tuple[str, str | None]:
        """Add the next piece of text; return (text safe to emit, the stop sequence if one matched now).

        On a match the emitted text ends just before the stop sequence (or just after it, with
        include_stop_sequence), and every later call returns ("", None).
        """
        if self.is_stopped:
            return "", None
        self._buffer += text
        found = self._first_match()
        if found is not None:
            return self._finish_at(found)
        hold = self._hold_start()
        ready, self._buffer = self._buffer[:hold], self._buffer[hold:]
        self._buffer_start += hold
        return ready, None

    def flush(self) -> tuple[str, str | None]:
        """Generation ended: return (the held-back tail, None), since no stop can complete any more."""
        if self.is_stopped:
            return "", None
        self._is_flushed = True
        ready, self._buffer = self._buffer, ""
        self._buffer_start += len(ready)
        return ready, None

    def _first_match(self) -> StopMatch | None:
        """The stop in the buffer that ends first (ties: the longest), with offsets in all the text."""
        best: tuple[int, int, str] | None = None  # (end, -length, stop)
        for stop in self._stops:
            start = self._buffer.find(stop)
            if start >= 0:
                candidate = (start + len(stop), -len(stop), stop)
                best = candidate if best is None else min(best, candidate)
        if best is None:
            return None
        end, _, stop = best
        return StopMatch(stop, self._buffer_start + end - len(stop), self._buffer_start + end)

    def _finish_at(self, match: StopMatch) -> tuple[str, str | None]:
        self._match = match
        cut = (match.end if self._include_stop_sequence else match.start) - self._buffer_start
        ready, self._buffer = self._buffer[:cut], ""
        return ready, match.stop

    def _hold_start(self) -> int:
        """Where the longest buffer tail that is a proper prefix of a stop begins (the buffer's length if none)."""
        length = len(self._buffer)
        for start in range(max(0, length - self._longest + 1), length):
            if self._buffer[start:] in self._prefixes:
                return start
        return length
