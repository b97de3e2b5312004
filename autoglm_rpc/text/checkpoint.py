"""What the gateway needs to know about a checkpoint without loading it: config.json, generation_config.json.

Plain JSON reading, so the gateway learns the context limit, the end-of-sequence ids and the sampling defaults
without importing transformers. Values are resolved the way transformers' `generate()` resolves them.

A sampling default in generation_config.json outside the range a request may set (top_p 1.5, a negative
temperature, NaN) is ignored with a warning naming the file and the field, and transformers' own default is used:
the checkpoint stays servable, and requests that set the field themselves were never affected. Refusing to start
would take a whole model down for one value a request can override.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm_rpc.text.files import read_json_object
from autoglm_rpc.text.tokenizer_config import read_tokenizer_options

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"

# The names architectures give the context length, most common first (GPT-2: n_positions, ChatGLM: seq_length).
_CONTEXT_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length", "n_ctx")
# transformers' generate() fills these when generation_config leaves them unset.
_HF_DEFAULT_TOP_K = 50
# What a request may set (grpc_api/convert.py checks requests against the same): (low, high, is the low end
# excluded).
_SAMPLING_RANGES = {
    "temperature": (0.0, 100.0, False),
    "top_p": (0.0, 1.0, True),
    "top_k": (0.0, 1_000_000.0, False),
    "repetition_penalty": (0.0, 10.0, True),
    "max_new_tokens": (1.0, math.inf, False),
}

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GenerationDefaults:
    """Sampling defaults from generation_config.json.

    temperature: 0.0 (greedy) unless do_sample is true, as `generate()` decodes greedily then.
    top_k: transformers' default 50 when unset; 0 would disable it. top_p 1.0 and repetition_penalty 1.0 disable.
    max_new_tokens / max_length: as configured, None when absent.
    """

    do_sample: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = _HF_DEFAULT_TOP_K
    repetition_penalty: float = 1.0
    max_new_tokens: int | None = None
    max_length: int | None = None


@dataclass(frozen=True, slots=True)
class CheckpointFacts:
    """What config.json and generation_config.json say about serving the model.

    architecture: config.architectures[0] ("" when absent), e.g. "GlmForCausalLM".
    max_position_embeddings: the context length under whichever name config.json uses, else tokenizer_config.json's
        model_max_length; None when neither says.
    eos_token_ids: from generation_config.json when it sets them, else from config.json (may be empty).
    quantization: config.quantization_config.quant_method for pre-quantized checkpoints, else None.
    """

    architecture: str
    model_type: str
    max_position_embeddings: int | None
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    pad_token_id: int | None
    vocab_size: int | None
    dtype: str | None
    quantization: str | None
    defaults: GenerationDefaults


def read_checkpoint_facts(path: str | Path) -> CheckpointFacts:
    """Read the facts of the checkpoint directory `path`.

    Raises CheckpointFileError when config.json is missing or either file is not a JSON object.
    """
    directory = Path(path)
    config = read_json_object(directory / CONFIG_FILE, required=True)
    generation = read_json_object(directory / GENERATION_CONFIG_FILE, required=False)
    # Multimodal configs (GLM-4V, ...) keep the language model's settings in text_config.
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    architectures = config.get("architectures") or []
    quantization_config = config.get("quantization_config")
    return CheckpointFacts(
        architecture=str(architectures[0]) if architectures else "",
        model_type=str(config.get("model_type", "")),
        max_position_embeddings=(
            _context_length(config) or _context_length(text_config) or _tokenizer_max_length(directory)
        ),
        eos_token_ids=_eos_token_ids(generation, config, text_config),
        bos_token_id=_optional_int(_first_set("bos_token_id", generation, config, text_config)),
        pad_token_id=_optional_int(_first_set("pad_token_id", generation, config, text_config)),
        vocab_size=_optional_int(_first_set("vocab_size", config, text_config)),
        dtype=_optional_str(config.get("dtype", config.get("torch_dtype"))),
        quantization=(
            _optional_str(quantization_config.get("quant_method"))
            if isinstance(quantization_config, dict)
            else None
        ),
        defaults=_generation_defaults(_valid_defaults(generation, directory / GENERATION_CONFIG_FILE)),
    )


def _valid_defaults(generation: dict[str, Any], path: Path) -> dict[str, Any]:
    """`generation` without the sampling defaults a request could not set; each one dropped is logged."""
    valid = dict(generation)
    for name, (low, high, low_open) in _SAMPLING_RANGES.items():
        value = generation.get(name)
        if value is None:
            continue
        number = _optional_float(value)
        if (
            number is None
            or not math.isfinite(number)
            or not low <= number <= high
            or (low_open and number == low)
        ):
            bracket = "(" if low_open else "["
            logger.warning(
                "%s: %s is %r, outside %s%g, %g]; ignoring it (transformers' default applies)",
                path, name, value, bracket, low, high,
            )  # fmt: skip
            del valid[name]
    return valid


def _generation_defaults(generation: dict[str, Any]) -> GenerationDefaults:
    do_sample = bool(generation.get("do_sample") or False)
    temperature = _optional_float(generation.get("temperature"))
    top_k = _optional_int(generation.get("top_k"))
    return GenerationDefaults(
        do_sample=do_sample,
        temperature=(temperature if temperature is not None else 1.0) if do_sample else 0.0,
        top_p=_optional_float(generation.get("top_p")) or 1.0,
        top_k=_HF_DEFAULT_TOP_K if top_k is None else top_k,
        repetition_penalty=_optional_float(generation.get("repetition_penalty")) or 1.0,
        max_new_tokens=_optional_int(generation.get("max_new_tokens")),
        max_length=_optional_int(generation.get("max_length")),
    )


def _context_length(config: dict[str, Any]) -> int | None:
    for key in _CONTEXT_LENGTH_KEYS:
        value = _optional_int(config.get(key))
        if value is not None and value > 0:
            return value
    return None


def _tokenizer_max_length(directory: Path) -> int | None:
    return read_tokenizer_options(directory).model_max_length


def _eos_token_ids(*sources: dict[str, Any]) -> tuple[int, ...]:
    value = _first_set("eos_token_id", *sources)
    values = value if isinstance(value, list) else [value]
    return tuple(dict.fromkeys(item for item in values if isinstance(item, int) and not isinstance(item, bool)))


def _first_set(key: str, *sources: dict[str, Any]) -> Any:
    for source in sources:
        if source.get(key) is not None:
            return source[key]
    return None


def _optional_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _optional_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
