"""Which token boundaries a tokenizer's decoder lets a stream cut at without changing text already sent.

Incremental detokenization decodes a small window of recent tokens and sends the text the window adds. That is
exact only when later tokens never rewrite earlier text. Most decoders are local (ByteLevel, Metaspace, WordPiece,
Replace, Fuse, a leading Strip): a token's text depends only on itself and on whether it opens the window, which
the window technique accounts for. Two cases are not:
- ByteFallback decodes a run of `<0xNN>` byte tokens as one UTF-8 unit, and one bad byte turns the whole run into
  replacement characters, so no cut may fall right after a byte token (`unstable_tail_ids`).
- CTC, a trailing Strip, a multi-character Replace on fused text and decoders this module does not know can
  rewrite text across tokens; for those the stream holds everything until the end (`is_streamable` false).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_LOCAL_DECODERS = frozenset({"ByteLevel", "Metaspace", "WordPiece", "BPEDecoder", "Fuse", "ByteFallback"})


@dataclass(frozen=True, slots=True)
class DecoderRules:
    """How a stream may cut this tokenizer's output.

    is_streamable: false when text can only be trusted once all tokens are known.
    unstable_tail_ids: a stream must not cut right after one of these tokens (byte-fallback tokens).
    is_context_free: the decoder is ByteLevel alone, which maps every token to its bytes and decodes their
        concatenation as UTF-8: the text of ids cut at a character boundary is the text of each side joined, so
        a window needs no context tokens (one decode per step instead of two).
    """

    is_streamable: bool = True
    unstable_tail_ids: frozenset[int] = frozenset()
    is_context_free: bool = False


def analyze_decoder(decoder: Mapping[str, Any] | None, vocab: Mapping[str, int]) -> DecoderRules:
    """Derive the rules from tokenizer.json's "decoder" entry and the full vocabulary (token -> id)."""
    if decoder is None:
        return DecoderRules()  # tokens joined with spaces: local
    steps = _flatten(decoder)
    if not _is_local(steps):
        logger.warning("decoder %s can rewrite earlier text; streamed text is held until the end", _names(steps))
        return DecoderRules(is_streamable=False)
    if _names(steps) == ["ByteLevel"]:
        return DecoderRules(is_context_free=True)
    if "ByteFallback" not in _names(steps):
        return DecoderRules()
    byte_ids = frozenset(token_id for token, token_id in vocab.items() if _BYTE_TOKEN.fullmatch(token))
    return DecoderRules(unstable_tail_ids=byte_ids)


def _flatten(decoder: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if decoder.get("type") == "Sequence":
        return [step for child in decoder.get("decoders", []) for step in _flatten(child)]
    return [decoder]


def _names(steps: list[Mapping[str, Any]]) -> list[str]:
    return [str(step.get("type")) for step in steps]


def _is_local(steps: list[Mapping[str, Any]]) -> bool:
    is_fused = False  # after Fuse the remaining steps see the whole text as one token
    for step in steps:
        kind = step.get("type")
        if kind == "Strip":
            if int(step.get("stop", 0)) > 0:
                return False
        elif kind == "Replace":
            pattern = step.get("pattern", {})
            literal = pattern.get("String") if isinstance(pattern, Mapping) else None
            if is_fused and (literal is None or len(literal) > 1):
                return False
        elif kind not in _LOCAL_DECODERS:
            return False
        is_fused = is_fused or kind == "Fuse"
    return True
