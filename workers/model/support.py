"""What the engine can run, decided once at load: a model it would compute wrong is refused with one clear error.

The engine keeps the Hugging Face model class and replaces only its attention function (`workers.kv.attention`),
which reads K/V from the engine's cache and supports causal attention over full or sliding-window layers, a
logit soft-cap and the module's own score scaling. Everything else a layer does (rotary variants such as Gemma
3's local rope base, q/k norms, fused projections, embedding scales) is the model's own code and needs nothing
here. What the engine cannot reproduce is refused before the worker reports Ready: a checkpoint that is not a
causal LM at all by `check_causal_lm`, from config.json alone before any weight is read (transformers would end
with "Unrecognized configuration class" and some 300 class names), the rest by `check_supported` once loaded:

- a checkpoint whose declared class is not a causal LM (an encoder, a classifier, a vision or vision-language
  model such as GLM-4V): the engine loads `AutoModelForCausalLM`. A multimodal class transformers maps to it
  (Gemma 3's `Gemma3ForConditionalGeneration`) is served by its language model;
- a model class that does not call attention through transformers' `AttentionInterface`;
- encoder-decoder models, and bidirectional (non-causal) attention;
- attention layers other than full or sliding-window (chunked, linear, state-space, ...);
- logits scaled by anything but Gemma's final soft-cap (which the model runner applies);
- rope types that pick their frequencies from the longest position in a forward ("dynamic", "longrope": Phi-3
  128k, Phi-3.5): under continuous batching the rows of a forward belong to different requests, so one request
  would change another's output;
- attention sinks (gpt-oss): found by their parameters, and by the attention function should a layer pass them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention")
# Vision-language checkpoints the engine serves with their images: loaded as image-text-to-text models, the
# language model on the engine's attention, the vision tower on SDPA (`workers.model.vision` runs it).
VISION_ARCHITECTURES = frozenset({"Glm4vForConditionalGeneration"})
_ADVICE = (
    "the engine serves decoder-only causal LMs whose layers use full or sliding-window attention; serve a "
    "checkpoint of a supported family (docs/models.md, Supported models)"
)


class UnsupportedModelError(ValueError):
    """A checkpoint the engine cannot run correctly. The message names the architecture, the feature and the way
    out; it is the same on every attempt, so a worker that raises it should not be restarted."""

    def __init__(self, architecture: str, feature: str) -> None:
        super().__init__(f"{architecture} is not supported: {feature}; {_ADVICE}")
        self.architecture = architecture
        self.feature = feature


def check_causal_lm(config: Mapping[str, Any], trust_remote_code: bool = False) -> None:
    """Raise `UnsupportedModelError` unless config.json (`config`) declares a model `AutoModelForCausalLM` loads,
    or one of `VISION_ARCHITECTURES`.

    Refused: an architecture (`architectures[0]`) that transformers files under other tasks only (masked LM,
    sequence classification, image-text-to-text, a bare encoder), or a `model_type` with no causal-LM class. A
    remote-code checkpoint whose `auto_map` names an AutoModelForCausalLM class is left to transformers, and so is
    an architecture name transformers does not know (old spellings load by `model_type`).
    """
    from transformers.models.auto import modeling_auto

    model_type = str(config.get("model_type", ""))
    architecture = str((config.get("architectures") or [""])[0])
    auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    causal = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if architecture in VISION_ARCHITECTURES:  # loaded as a vision-language model (see `is_vision_architecture`)
        return
    if (trust_remote_code and "AutoModelForCausalLM" in auto_map) or architecture in causal.values():
        return
    tasks = _tasks_of(modeling_auto, architecture) if architecture else []
    if tasks:
        reason = f"transformers has it for {_task_words(tasks[0])}, not as a causal LM"
    elif model_type not in causal:
        reason = f"transformers has no causal-LM class for model_type {model_type!r}"
    else:
        return
    # Vision-language models are a family the engine means to serve; the others are a different kind of model.
    what = "a causal LM this engine serves yet" if set(tasks) & _VISION_LANGUAGE else "a causal language model"
    declared = f"config.json: architectures {architecture or '(none)'}, model_type {model_type or '(none)'}"
    raise UnsupportedModelError(
        architecture or model_type or "this checkpoint", f"it is not {what} ({declared}; {reason})"
    )


_VISION_LANGUAGE = {"IMAGE_TEXT_TO_TEXT", "MULTIMODAL_LM", "VISUAL_QUESTION_ANSWERING"}


def _tasks_of(modeling_auto, architecture: str) -> list[str]:
    """The auto-class tables that list `architecture` ("MASKED_LM", "IMAGE_TEXT_TO_TEXT"), most telling first."""
    tasks = []
    for name in dir(modeling_auto):
        if not (name.startswith("MODEL_") and name.endswith("_MAPPING_NAMES")):
            continue
        task = "MODEL" if name == "MODEL_MAPPING_NAMES" else name[len("MODEL_FOR_") : -len("_MAPPING_NAMES")]
        names = [n for value in getattr(modeling_auto, name).values() for n in _as_tuple(value)]
        if task != "CAUSAL_LM" and architecture in names:
            tasks.append(task)
    # The bare-model and pre-training tables say least about what the class is for.
    return sorted(tasks, key=lambda task: task in ("MODEL", "PRETRAINING"))


def _as_tuple(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (value,)


def _task_words(task: str) -> str:
    """ "MASKED_LM" as "masked LM"; the tables whose names say little, in words."""
    words = {
        "MODEL": "a bare model without a head",
        "SEQ_TO_SEQ_CAUSAL_LM": "sequence-to-sequence (encoder-decoder)",
    }
    if task in words:
        return words[task]
    return " ".join("LM" if word == "LM" else word.lower() for word in task.split("_"))


def check_supported(model: torch.nn.Module, attention_name: str) -> None:
    """Raise `UnsupportedModelError` if the engine (attention `attention_name`) would compute `model` wrong.

    A multimodal checkpoint is judged by its language model: for Gemma 3 that is all the engine runs (prompts
    are text, the vision tower is never called); a `VISION_ARCHITECTURES` checkpoint's vision tower runs on
    transformers' SDPA, outside the engine's cache.
    """
    text_config = model.config.get_text_config()
    problem = _unsupported_model(model, text_config, attention_name) or _unsupported_layers(text_config)
    if problem is None and any(name.endswith("self_attn.sinks") for name, _ in model.named_parameters()):
        problem = "attention sinks"
    if problem is not None:
        raise UnsupportedModelError(architecture_of(model), problem)


def architecture_of(module: torch.nn.Module) -> str:
    """The checkpoint's architecture name (`config.architectures[0]`), else the module's class name."""
    config = getattr(module, "config", None)
    return (getattr(config, "architectures", None) or [type(module).__name__])[0]


def is_vision_architecture(architecture: str) -> bool:
    """Whether the engine serves this architecture's images (see `VISION_ARCHITECTURES`)."""
    return architecture in VISION_ARCHITECTURES


def _unsupported_model(model: torch.nn.Module, text_config, attention_name: str) -> str | None:
    # A vision-language model's own config names its vision tower's attention; the language model's is ours.
    if not type(model).is_backend_compatible() or text_config._attn_implementation != attention_name:
        return "its attention does not go through transformers' AttentionInterface, which the engine replaces"
    if getattr(model.config, "is_encoder_decoder", False):
        return "it is an encoder-decoder model"
    return None


def _unsupported_layers(config) -> str | None:
    """What in the language model's config the engine cannot reproduce, or None."""
    if getattr(config, "use_bidirectional_attention", False):
        return "use_bidirectional_attention (non-causal attention)"
    if getattr(config, "attention_chunk_size", None):
        return f"chunked attention (attention_chunk_size={config.attention_chunk_size})"
    other_types = sorted(set(getattr(config, "layer_types", None) or ()) - set(SUPPORTED_LAYER_TYPES))
    if other_types:
        return f"layer types {other_types} (the engine runs {list(SUPPORTED_LAYER_TYPES)})"
    if getattr(config, "logit_scale", None) not in (None, 1.0):
        return f"logit_scale={config.logit_scale} (logits scaled after the LM head)"
    # transformers' `dynamic_rope_update` recomputes these frequencies from max(position_ids) + 1 of each forward.
    rope_types = _rope_types(getattr(config, "rope_parameters", None))
    rope_types = sorted(t for t in rope_types if "dynamic" in t or t == "longrope")
    if rope_types:
        return (
            f"rope type {rope_types[0]!r}, which picks its frequencies from the longest sequence in a forward: "
            "in a shared batch one request's length would change another's tokens"
        )
    return None


def _rope_types(parameters) -> set[str]:
    """The rope types of `config.rope_parameters`: one dict, or one per layer type (Gemma 3)."""
    if not isinstance(parameters, dict):
        return set()
    if isinstance(parameters.get("rope_type"), str):
        return {parameters["rope_type"]}
    per_layer_type = [p for p in parameters.values() if isinstance(p, dict)]
    return {p["rope_type"] for p in per_layer_type if isinstance(p.get("rope_type"), str)}
