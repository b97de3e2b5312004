"""One request's output text: generated ids -> incremental detokenizer -> stop-sequence matcher.

The frontend makes a `TextStream` per request, pushes the token ids of each worker delta as they arrive, and
calls `flush` when the worker reports the request finished (or it was cancelled). Plain data in and out: no grpc,
no protobuf.
"""

from __future__ import annotations

from collections.abc import Iterable

from autoglm_rpc.text.detokenizer import IncrementalDetokenizer
from autoglm_rpc.text.stops import StopSequenceMatcher
from autoglm_rpc.text.tokenizer import TextTokenizer


class TextStream:
    """Turns a request's generated token ids into output text, honouring stop sequences.

    Contract: the concatenation of every `push` result and `flush()` equals `tokenizer.decode(token_ids)` for the
    kept `token_ids`, cut just before the matched stop sequence (just after it with include_stop_sequence); every
    piece is whole characters (replacement characters for bytes that never formed one can appear, in `flush`
    only when nothing follows them). A matched stop ends the output: `stop_sequence` is set, `token_ids` ends with
    the token whose text completed it, the caller should cancel the request in its worker, and later pushes
    return "". One instance per request; not thread-safe.
    """

    def __init__(
        self,
        tokenizer: TextTokenizer,
        stop_sequences: Iterable[str] = (),
        *,
        include_stop_sequence: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        """Raises ValueError for an empty stop sequence."""
        self._detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
        self._matcher = StopSequenceMatcher(stop_sequences, include_stop_sequence=include_stop_sequence)
        self._token_ids: list[int] = []
        self._text_parts: list[str] = []
        self._is_flushed = False

    @property
    def is_stopped(self) -> bool:
        """True once a stop sequence has matched."""
        return self._matcher.match is not None

    @property
    def stop_sequence(self) -> str | None:
        """The stop sequence that ended the output, if one did."""
        match = self._matcher.match
        return None if match is None else match.stop

    @property
    def token_ids(self) -> tuple[int, ...]:
        """The output's token ids: everything pushed, or up to the token that completed a stop sequence."""
        return tuple(self._token_ids)

    @property
    def num_tokens(self) -> int:
        """How many generated tokens the output counts (usage.completion_tokens)."""
        return len(self._token_ids)

    @property
    def text(self) -> str:
        """All the text emitted so far; after `flush`, the whole output text."""
        return "".join(self._text_parts)

    def push(self, token_ids: int | Iterable[int]) -> str:
        """Feed the next generated id (or ids); return the text they add, possibly "". ValueError after `flush`."""
        if self._is_flushed:
            raise ValueError("push after flush: the output is finished")
        ids = (token_ids,) if isinstance(token_ids, int) else tuple(token_ids)
        if not self._matcher.has_stops:
            # Nothing to pin to a token: the whole delta goes through the detokenizer at once (one decode pair per
            # delta, not per token), and no matcher runs.
            self._token_ids.extend(ids)
            return self._emit(self._detokenizer.push(ids))
        parts: list[str] = []
        for token_id in ids:
            if self.is_stopped:
                break
            self._token_ids.append(token_id)
            # One id at a time, so that a stop is pinned to the token that completed it.
            text, _ = self._matcher.feed(self._detokenizer.push((token_id,)))
            parts.append(text)
        return self._emit("".join(parts))

    def flush(self) -> str:
        """Generation ended: return the held-back text. Later calls return ""."""
        if self._is_flushed:
            return ""
        self._is_flushed = True
        if self.is_stopped:
            return ""
        text, _ = self._matcher.feed(self._detokenizer.flush())
        if not self.is_stopped:
            text += self._matcher.flush()[0]
        return self._emit(text)

    def _emit(self, text: str) -> str:
        self._text_parts.append(text)
        return text
