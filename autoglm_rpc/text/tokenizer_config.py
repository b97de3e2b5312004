"""What a checkpoint's tokenizer_config.json (and its legacy companions) say beyond tokenizer.json.

Mirrors how transformers (v5) reads these files, for the parts that change ids or text: the named special tokens
(also the chat template's variables), extra special tokens, `add_bos_token` / `add_eos_token`, the space clean-up
flag on decode, and the chat template with its precedence (chat_template.jinja over the config's entry, "default"
among named templates).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autoglm_rpc.text.errors import CheckpointFileError
from autoglm_rpc.text.files import read_json_object

logger = logging.getLogger(__name__)

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# transformers' SPECIAL_TOKENS_ATTRIBUTES: the named tokens every tokenizer may have.
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# transformers treats a max length this large as "no limit".
_NO_LIMIT = 10**12


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """One added token as tokenizer_config.json describes it (a string, or an AddedToken dict)."""

    content: str
    special: bool = True
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = False
    single_word: bool = False


@dataclass(frozen=True, slots=True)
class TokenizerOptions:
    """The tokenizer settings read from the config files; every field has its transformers default when absent.

    named_tokens: name -> token, the standard names (bos_token, eos_token, ...) plus model-specific ones such as
        image_token; all of them are passed to the chat template as variables.
    add_bos_token / add_eos_token: None when unset; informational, tokenizer.json's post-processor decides.
    chat_template: the template source, or None when the checkpoint has none.
    """

    named_tokens: dict[str, TokenSpec] = field(default_factory=dict)
    extra_special_tokens: tuple[TokenSpec, ...] = ()
    added_tokens: tuple[TokenSpec, ...] = ()
    add_bos_token: bool | None = None
    add_eos_token: bool | None = None
    clean_up_tokenization_spaces: bool = False
    clean_up_bpe_anyway: bool = False
    model_max_length: int | None = None
    chat_template: str | None = None


def read_tokenizer_options(directory: Path) -> TokenizerOptions:
    """Read tokenizer_config.json, special_tokens_map.json and chat_template.jinja from `directory`.

    All three are optional. Raises CheckpointFileError when one exists but is malformed.
    """
    config = read_json_object(directory / TOKENIZER_CONFIG_FILE, required=False)
    legacy_map = read_json_object(directory / SPECIAL_TOKENS_MAP_FILE, required=False)
    model_max_length = config.get("model_max_length")
    return TokenizerOptions(
        named_tokens=_named_tokens(config, legacy_map),
        extra_special_tokens=_extra_special_tokens(config, legacy_map),
        added_tokens=_added_tokens(config),
        add_bos_token=_optional_bool(config, "add_bos_token"),
        add_eos_token=_optional_bool(config, "add_eos_token"),
        clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        clean_up_bpe_anyway=bool(
            config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)
        ),
        model_max_length=(
            int(model_max_length)
            if isinstance(model_max_length, int | float) and 0 < model_max_length < _NO_LIMIT
            else None
        ),
        chat_template=_chat_template(directory, config),
    )


def token_spec(value: Any, *, special: bool = True) -> TokenSpec | None:
    """A token given as a string or as an AddedToken dict ({"content": ..., "lstrip": ...}); None otherwise."""
    if isinstance(value, str):
        return TokenSpec(content=value, special=special)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return TokenSpec(
            content=value["content"],
            special=bool(value.get("special", special)),
            lstrip=bool(value.get("lstrip", False)),
            rstrip=bool(value.get("rstrip", False)),
            normalized=bool(value.get("normalized", False)),
            single_word=bool(value.get("single_word", False)),
        )
    return None


def _named_tokens(config: dict[str, Any], legacy_map: dict[str, Any]) -> dict[str, TokenSpec]:
    # The legacy special_tokens_map.json only fills names the config leaves unset, as in transformers.
    merged = {**legacy_map, **{key: value for key, value in config.items() if value is not None}}
    named: dict[str, TokenSpec] = {}
    for key, value in merged.items():
        # Any other "*_token" string is a model-specific named token (image_token, ...), as transformers reads it.
        is_model_specific = key.endswith("_token") and isinstance(value, str)
        if key in NAMED_SPECIAL_TOKENS or is_model_specific:
            spec = token_spec(value)
            if spec is not None:
                named[key] = replace(spec, special=True)
    extra = config.get("extra_special_tokens")
    if isinstance(extra, dict):  # v5 writes model-specific named tokens here too
        for key, value in extra.items():
            spec = token_spec(value)
            if spec is not None:
                named[key] = spec
    return named


def _extra_special_tokens(config: dict[str, Any], legacy_map: dict[str, Any]) -> tuple[TokenSpec, ...]:
    values = config.get("extra_special_tokens", config.get("additional_special_tokens"))
    if values is None:
        values = legacy_map.get("extra_special_tokens", legacy_map.get("additional_special_tokens"))
    if not isinstance(values, list):
        return ()
    return tuple(spec for spec in (token_spec(value) for value in values) if spec is not None)


def _added_tokens(config: dict[str, Any]) -> tuple[TokenSpec, ...]:
    decoder = config.get("added_tokens_decoder")
    if not isinstance(decoder, dict):
        return ()
    ordered = sorted(decoder.items(), key=lambda item: int(item[0]))
    specs = (token_spec(value, special=False) for _, value in ordered)
    return tuple(spec for spec in specs if spec is not None)


def _optional_bool(config: dict[str, Any], key: str) -> bool | None:
    value = config.get(key)
    return None if value is None else bool(value)


def _chat_template(directory: Path, config: dict[str, Any]) -> str | None:
    template_file = directory / CHAT_TEMPLATE_FILE
    if template_file.is_file():
        try:
            return template_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CheckpointFileError(f"cannot read {template_file}: {error}") from error
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
        # transformers refuses to pick among named templates without a "default"; so do we.
        names = sorted(str(name) for name in named)
        logger.warning("%s has named chat templates %s but no 'default'; chat input is disabled", directory, names)
        return None
    raise CheckpointFileError(f"{directory / TOKENIZER_CONFIG_FILE}: chat_template must be a string or a list")
