"""Token ids in, text deltas out, whole characters only, in O(window) per token.

The technique vLLM and TGI use: keep two offsets into the ids, `prefix` and `read`. Each push decodes
ids[prefix:read] (text already sent, kept as context) and ids[prefix:] and sends what the second adds to the first.
The context matters: decoders treat the first token of a call specially (Metaspace and WordPiece drop its leading
space), and the shared context makes both decodes agree on it. Nothing is sent while the new text ends in U+FFFD (a
character whose bytes are split across tokens), right after a token the decoder may still merge with the next
(`DecoderRules.unstable_tail_ids`), or while the new tokens add no text; the window then grows until they do.
A ByteLevel decoder (GPT-2, Llama 3, Qwen, GLM-4) needs no context: the window's new ids are decoded alone.

Invariant: the concatenation of every `push` result and `flush()` equals `tokenizer.decode(all ids)` exactly, even
for byte sequences that are not UTF-8 (random-weight models produce them): `flush` returns the held-back rest,
replacement characters included.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from autoglm_rpc.text.cleanup import CleanupStream
from autoglm_rpc.text.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)

_REPLACEMENT_CHARACTER = "\ufffd"


class IncrementalDetokenizer:
    """Decodes one request's generated tokens as they arrive. One instance per request; not thread-safe."""

    def __init__(self, tokenizer: TextTokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._rules = tokenizer.decoder_rules
        self._cleanup = CleanupStream() if tokenizer.cleans_up_spaces else None
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._sent_raw: list[str] = []  # raw (before clean-up) text sent so far, for the check in flush
        self._is_flushed = False

    @property
    def token_ids(self) -> list[int]:
        """Every id pushed so far (a copy)."""
        return list(self._ids)

    def push(self, token_ids: Iterable[int]) -> str:
        """Add the next generated ids; return the text they complete, possibly "". ValueError after `flush`."""
        if self._is_flushed:
            raise ValueError("push after flush: a detokenizer serves one finished sequence")
        self._ids.extend(token_ids)
        if not self._rules.is_streamable:
            return ""
        raw = self._advance()
        if not raw:
            return ""
        self._sent_raw.append(raw)
        return self._cleanup.push(raw) if self._cleanup is not None else raw

    def flush(self) -> str:
        """Return everything held back; after this the detokenizer is finished (flush again returns "")."""
        if self._is_flushed:
            return ""
        self._is_flushed = True
        full = self._tokenizer.decode_raw(self._ids, self._skip_special_tokens)
        sent = "".join(self._sent_raw)
        if not full.startswith(sent):
            # Cannot happen for the decoders DecoderRules accepts; logged so a new decoder type shows up.
            logger.warning("incremental decode diverged from the full decode after %s tokens", len(self._ids))
        rest = full[len(sent) :]
        if self._cleanup is None:
            return rest
        return self._cleanup.push(rest) + self._cleanup.flush()

    def _advance(self) -> str:
        """Raw text of the tokens past `read_offset` when they end at a safe cut; moves the offsets if so."""
        if self._read_offset == len(self._ids) or self._ends_unstable():
            return ""
        decode = self._tokenizer.decode_raw
        if self._rules.is_context_free:
            # Every cut so far fell on a character boundary (text ending in U+FFFD is held), so the new ids
            # decode alone to exactly what they add.
            text = decode(self._ids[self._read_offset :], self._skip_special_tokens)
            if not text or text.endswith(_REPLACEMENT_CHARACTER):
                return ""
            self._prefix_offset = self._read_offset = len(self._ids)
            return text
        prefix_text = decode(self._ids[self._prefix_offset : self._read_offset], self._skip_special_tokens)
        new_text = decode(self._ids[self._prefix_offset :], self._skip_special_tokens)
        if (
            len(new_text) <= len(prefix_text)
            or new_text.endswith(_REPLACEMENT_CHARACTER)
            or not new_text.startswith(prefix_text)
        ):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return new_text[len(prefix_text) :]

    def _ends_unstable(self) -> bool:
        """Whether the last id that decode keeps (it drops skipped special tokens and unknown ids) is unstable."""
        unstable = self._rules.unstable_tail_ids
        if not unstable:
            return False
        for token_id in reversed(self._ids):
            is_skipped = self._skip_special_tokens and token_id in self._tokenizer.special_token_ids
            if not is_skipped and self._tokenizer.id_to_token(token_id) is not None:
                return token_id in unstable
        return False
