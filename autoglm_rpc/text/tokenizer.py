"""The gateway's tokenizer: a checkpoint's tokenizer.json run by the `tokenizers` library, no transformers.

It gives the ids and text transformers' `AutoTokenizer` (v5) gives for the same directory: the config's special
tokens are added when tokenizer.json lacks them, tokenizer.json's post-processor decides what `add_special_tokens`
adds (transformers 5 ignores the config's add_bos_token / add_eos_token when tokenizer.json exists; a disagreement
is logged), decode applies the space clean-up where transformers would, and chat templates render through
`ChatTemplate` with the named special tokens in scope.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer

from autoglm_rpc.text.chat_template import ChatTemplate, ChatTurn
from autoglm_rpc.text.cleanup import clean_up_tokenization
from autoglm_rpc.text.decoder_rules import DecoderRules, analyze_decoder
from autoglm_rpc.text.errors import ChatTemplateError, ChatTemplateMissing, CheckpointFileError
from autoglm_rpc.text.tokenizer_config import TokenizerOptions, TokenSpec, read_tokenizer_options

# The errors its methods raise, importable from here too.
__all__ = ["ChatTemplateError", "ChatTemplateMissing", "CheckpointFileError", "TextTokenizer"]

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"


class TextTokenizer:
    """Encode, decode and chat-render for one checkpoint. Immutable after construction; safe to share."""

    def __init__(self, backend: Tokenizer, options: TokenizerOptions) -> None:
        """Wrap a loaded `tokenizers.Tokenizer` with the checkpoint's options (use `from_dir` normally).

        The backend is modified: truncation and padding are switched off (the gateway checks lengths itself) and
        the config's special tokens that tokenizer.json lacks are added.
        """
        backend.no_truncation()
        backend.no_padding()
        _add_missing_tokens(backend, options)
        _check_bos_eos_flags(backend, options)
        self._backend = backend
        self._options = options
        self._chat_template = ChatTemplate(options.chat_template) if options.chat_template is not None else None
        serialized = json.loads(backend.to_str())
        self.decoder_rules: DecoderRules = analyze_decoder(serialized.get("decoder"), backend.get_vocab())
        model_type = serialized.get("model", {}).get("type")
        # transformers (v5) skips the clean-up for BPE models, where it would corrupt text, unless forced.
        self.cleans_up_spaces: bool = options.clean_up_tokenization_spaces and (
            model_type != "BPE" or options.clean_up_bpe_anyway
        )
        self.special_token_ids: frozenset[int] = frozenset(
            token_id for token_id, token in backend.get_added_tokens_decoder().items() if token.special
        )
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.model_max_length: int | None = options.model_max_length
        self._template_variables = {name: spec.content for name, spec in options.named_tokens.items()}

    @classmethod
    def from_dir(cls, path: str | Path) -> TextTokenizer:
        """Load the tokenizer of the checkpoint directory `path`.

        Needs `tokenizer.json` (the fast-tokenizer file); tokenizer_config.json, special_tokens_map.json and
        chat_template.jinja are read when present. Raises CheckpointFileError when tokenizer.json is missing or a
        file is malformed (including a chat template that does not compile).
        """
        directory = Path(path)
        tokenizer_file = directory / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            raise CheckpointFileError(
                f"{directory} has no {TOKENIZER_FILE}: the gateway needs the fast-tokenizer file. A checkpoint "
                "that ships only a slow tokenizer (tokenizer.model, vocab.txt, ...) can be converted once with "
                "transformers: AutoTokenizer.from_pretrained(path).save_pretrained(path)"
            )
        try:
            backend = Tokenizer.from_file(str(tokenizer_file))
        except Exception as error:  # the Rust loader raises plain Exception subclasses
            raise CheckpointFileError(f"cannot load {tokenizer_file}: {error}") from error
        tokenizer = cls(backend, read_tokenizer_options(directory))
        logger.info(
            "loaded tokenizer from %s: %s tokens, chat template %s",
            directory,
            tokenizer.vocab_size,
            "present" if tokenizer.has_chat_template else "absent",
        )
        return tokenizer

    @property
    def has_chat_template(self) -> bool:
        return self._chat_template is not None

    @property
    def chat_template_source(self) -> str | None:
        """The chat template's jinja source (None without one), for reading what it expects."""
        return None if self._chat_template is None else self._chat_template.source

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The tokenizer's own end-of-sequence id (empty when it names none); see also `CheckpointFacts`."""
        return self._named_token_ids("eos_token")

    @property
    def bos_token_ids(self) -> tuple[int, ...]:
        return self._named_token_ids("bos_token")

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The token string of `token_id`; None for an id the tokenizer does not know (decode ignores those)."""
        return self._backend.id_to_token(token_id)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, what the post-processor adds (such as BOS)."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`, as transformers' decode gives it; unknown ids are ignored."""
        text = self.decode_raw(ids, skip_special_tokens)
        return clean_up_tokenization(text) if self.cleans_up_spaces else text

    def decode_raw(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """`decode` without the space clean-up (the incremental detokenizer applies that as a stream)."""
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: Sequence[ChatTurn], add_generation_prompt: bool = True) -> str:
        """The prompt text of a chat. Raises ChatTemplateMissing, or ChatTemplateError when the template fails."""
        if self._chat_template is None:
            raise ChatTemplateMissing("this model's checkpoint has no chat template; send a plain prompt instead")
        return self._chat_template.render(
            messages, add_generation_prompt=add_generation_prompt, variables=self._template_variables
        )

    def encode_chat(self, messages: Sequence[ChatTurn], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of `render_chat`'s text, encoded without special tokens as `apply_chat_template` does."""
        return self.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)

    def _named_token_ids(self, name: str) -> tuple[int, ...]:
        spec = self._options.named_tokens.get(name)
        token_id = None if spec is None else self._backend.token_to_id(spec.content)
        return () if token_id is None else (token_id,)


def _add_missing_tokens(backend: Tokenizer, options: TokenizerOptions) -> None:
    """Add the config's tokens that tokenizer.json lacks, as transformers does when it loads the pair."""
    present = {token.content for token in backend.get_added_tokens_decoder().values()}
    wanted = [*options.added_tokens, *options.named_tokens.values(), *options.extra_special_tokens]
    for spec in wanted:
        if spec.content in present:
            continue
        present.add(spec.content)
        token = _added_token(spec)
        if spec.special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])


def _added_token(spec: TokenSpec) -> AddedToken:
    return AddedToken(
        spec.content,
        single_word=spec.single_word,
        lstrip=spec.lstrip,
        rstrip=spec.rstrip,
        normalized=spec.normalized,
        special=spec.special,
    )


def _check_bos_eos_flags(backend: Tokenizer, options: TokenizerOptions) -> None:
    """Warn when add_bos_token / add_eos_token disagree with tokenizer.json's post-processor.

    transformers 5 ignores these flags when tokenizer.json exists (its post-processor decides), and so does the
    gateway, so that prompts get the same ids the model's own tokenizer gives them.
    """
    probe = backend.encode("", add_special_tokens=True).ids
    for name, flag, position in (
        ("bos_token", options.add_bos_token, 0),
        ("eos_token", options.add_eos_token, -1),
    ):
        spec = options.named_tokens.get(name)
        token_id = None if spec is None else backend.token_to_id(spec.content)
        if flag is None or token_id is None:
            continue
        is_added = bool(probe) and probe[position] == token_id
        if flag != is_added:
            logger.warning(
                "tokenizer_config.json sets add_%s=%s but tokenizer.json's post-processor does the opposite; "
                "following tokenizer.json, as transformers does",
                name, flag,
            )  # fmt: skip
