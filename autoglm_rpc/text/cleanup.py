"""transformers' `clean_up_tokenization_spaces` step, in one piece and as a stream.

Every replacement deletes a space that starts a pattern of at most four characters (" .", " n't", ...). So
cleaning text in two pieces gives the same result as cleaning it whole when the first piece's last space is at
least four characters from its end: no pattern can then straddle the cut, and the replacements, which only
delete spaces, keep it so. `CleanupStream` cuts at the last such point and holds back the rest.
"""

from __future__ import annotations

_REPLACEMENTS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)
_LONGEST_PATTERN = max(len(pattern) for pattern, _ in _REPLACEMENTS)


def clean_up_tokenization(text: str) -> str:
    """Remove the spaces a word-piece decode leaves before punctuation and English contractions."""
    for pattern, replacement in _REPLACEMENTS:
        text = text.replace(pattern, replacement)
    return text


class CleanupStream:
    """Applies `clean_up_tokenization` to text that arrives in pieces.

    Contract: the concatenation of every `push` result and the final `flush` equals
    `clean_up_tokenization(concatenation of the pushed pieces)`.
    """

    def __init__(self) -> None:
        self._pending = ""

    def push(self, text: str) -> str:
        """Add raw text; return the cleaned text that no later piece can change."""
        self._pending += text
        cut = _safe_cut(self._pending)
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        return clean_up_tokenization(ready)

    def flush(self) -> str:
        """Return the cleaned rest; the stream is then empty."""
        ready, self._pending = self._pending, ""
        return clean_up_tokenization(ready)


def _safe_cut(text: str) -> int:
    """The largest cut with no space among the (up to) `_LONGEST_PATTERN - 1` characters before it."""
    cut = len(text)
    while cut > 0:
        space = text.rfind(" ", max(0, cut - (_LONGEST_PATTERN - 1)), cut)
        if space < 0:
            break
        cut = space
    return cut
