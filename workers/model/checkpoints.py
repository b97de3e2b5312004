"""Tiny random-weight checkpoints built locally: the demo model and the test suite's models.

Nothing is downloaded. A byte-level BPE tokenizer is trained in-process on a small multilingual corpus (so
multi-byte characters split across tokens occur), and a causal LM of a real architecture (one of `ARCHITECTURES`)
with a few layers gets random weights. The result is an ordinary Hugging Face checkpoint directory (safetensors,
tokenizer.json, generation_config.json) that `AutoModelForCausalLM` and `AutoTokenizer` load. Its text is noise.
A vision-language checkpoint of GLM-4.1V's architecture (AutoGLM-Phone-9B's, `build_glm4v_checkpoint`) has the
same tokenizer plus GLM-4.1V's image tokens, a chat template that renders image parts, and a real image
processor config (`preprocessor_config.json`).
"""

# The corpus holds full-width punctuation on purpose.
# ruff: noqa: RUF001
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from workers.protocol import RANDOM_WEIGHTS_MARKER

logger = logging.getLogger(__name__)

# architecture -> the transformers config class of its text model.
_CONFIG_CLASSES = {
    "glm": "GlmConfig",
    "glm4": "Glm4Config",
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "qwen3": "Qwen3Config",
    "mistral": "MistralConfig",
    "phi3": "Phi3Config",
    "gemma2": "Gemma2Config",
    "gemma3": "Gemma3TextConfig",
}
ARCHITECTURES = tuple(_CONFIG_CLASSES)

EOS_TOKEN = "<|endoftext|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# A GLM-4-style template: role tokens, no BOS, the assistant turn opened by the generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A gateway routes requests to workers over pipes.
Continuous batching lets requests join and leave the running batch at every step of the engine.
Tokens stream back to the caller as soon as they are sampled; the stream ends with a finish reason.
Héllo wörld! Ça va? Naïve café, crème brûlée, smörgåsbord, façade, jalapeño, Straße, Øresund.
你好，世界！今天天气很好。我们在服务器上运行语言模型。中文字符通常由三个字节组成。
こんにちは世界。日本語のテキストも含まれています。カタカナとひらがな。
안녕하세요 세계. 한국어 문장도 있습니다.
Привет, мир! Это пример текста на русском языке.
Emoji travel as four bytes: 😀 🚀 🌍 🎉 👍 🤖 — and dashes, “quotes”, ellipses…
Numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 1024 65536 and symbols: + - * / = < > ( ) [ ] { } # @ & % $.
def generate(prompt, max_new_tokens=128): return model.generate(prompt, max_new_tokens)
"""


@dataclass(frozen=True, slots=True)
class TinyModelSpec:
    """Shape of a tiny model; the defaults keep a forward pass at a millisecond or two on one CPU core."""

    architecture: str = "glm"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    vocab_size: int = 640
    seed: int = 0
    has_chat_template: bool = True
    # A sliding window on the layers the architecture slides: all of them (Mistral, Phi-3), all but the first
    # (Qwen2, Qwen3: `use_sliding_window` from `max_window_layers` 1), or every other one (Gemma 2, Gemma 3).
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.sliding_window is not None and self.architecture in ("glm", "glm4", "llama"):
            raise ValueError(f"sliding_window: {self.architecture} has no sliding-window attention")


DEMO_SPEC = TinyModelSpec(
    architecture="glm",
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    vocab_size=1200,
    seed=1234,
)


def train_tokenizer(vocab_size: int, extra_special_tokens: tuple[str, ...] = ()):  # -> tokenizers.Tokenizer
    """Train a byte-level BPE on the built-in corpus; special tokens get the first ids (EOS is 0, then the role
    tokens, then `extra_special_tokens`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[EOS_TOKEN, *ROLE_TOKENS, *extra_special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    return tokenizer


def _window_settings(spec: TinyModelSpec) -> dict:
    """The config keywords that put `spec.sliding_window` on the layers its architecture slides."""
    window = spec.sliding_window
    if spec.architecture in ("gemma2", "gemma3"):
        # Gemma always has windowed layers (4096 tokens unless told), alternating with full ones from the first.
        layer_types = [("sliding_attention", "full_attention")[i % 2] for i in range(spec.num_hidden_layers)]
        return {"layer_types": layer_types, **({"sliding_window": window} if window else {})}
    if window is None:
        return {"sliding_window": None} if spec.architecture == "mistral" else {}  # Mistral: 4096 unless told
    if spec.architecture in ("qwen2", "qwen3"):
        return {"use_sliding_window": True, "sliding_window": window, "max_window_layers": 1}
    return {"sliding_window": window}


def _model_config(spec: TinyModelSpec, vocab_size: int, eos_token_id: int):
    import transformers

    config_class = getattr(transformers, _CONFIG_CLASSES[spec.architecture])
    return config_class(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.hidden_size // spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        **_window_settings(spec),
    )


def build_checkpoint(path: str | Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Write a random-weight checkpoint of `spec` to `path` (created if needed) and return the path.

    The same spec always gives the same weights and tokenizer, so tests can rebuild a checkpoint anywhere.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(spec.vocab_size),
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=spec.max_position_embeddings,
    )
    if spec.has_chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    eos_token_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)

    torch.manual_seed(spec.seed)
    config = _model_config(spec, len(tokenizer), eos_token_id)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_token_id, pad_token_id=eos_token_id, do_sample=False, max_new_tokens=64
    )
    model.save_pretrained(path, safe_serialization=True)
    (path / RANDOM_WEIGHTS_MARKER).write_text(json.dumps({"random_weights": True, "spec": spec.architecture}))
    logger.info("built a random-weight %s checkpoint at %s", spec.architecture, path)
    return path


def build_demo_checkpoint(path: str | Path) -> Path:
    """The checkpoint `make run` serves when no model is configured: random weights, a real tokenizer."""
    return build_checkpoint(path, DEMO_SPEC)


# GLM-4.1V's special tokens, in the order of the config ids they give (image_start_token_id, ...).
GLM4V_TOKENS = (
    "[gMASK]",
    "<sop>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|video|>",
)
# GLM-4.1V's template: a "[gMASK]<sop>" prefix, role tokens, and each image part as one <|image|> between its
# begin/end tokens (the processor, here the gateway, repeats <|image|> once per image token).
GLM4V_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True, slots=True)
class TinyGlm4vSpec:
    """Shape of a tiny GLM-4.1V: a 2-layer text model and a 2-layer vision tower (patch 14, spatial merge 2,
    temporal patch 2, as the real one). Images are resized to between `min_image_tokens` and `max_image_tokens`
    image tokens (each token is a 28 x 28 pixel square), so a test image gives a few dozen."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2  # head_dim 32: partial rotary 0.5 gives 8 frequencies, mrope_section 2+3+3
    num_key_value_heads: int = 1
    max_position_embeddings: int = 1024
    vocab_size: int = 640
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    min_image_tokens: int = 4
    max_image_tokens: int = 64
    seed: int = 0


def _glm4v_config(spec: TinyGlm4vSpec, vocab_size: int, token_ids: dict[str, int], eos_token_id: int):
    from transformers import Glm4vConfig

    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "eos_token_id": eos_token_id,
        "pad_token_id": eos_token_id,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": [2, 3, 3],
        },
    }
    vision_config = {
        "depth": spec.vision_layers,
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_heads": spec.vision_heads,
        "out_hidden_size": spec.hidden_size,
        "image_size": 112,  # an 8 x 8 grid of learned patch positions, interpolated to each image's grid
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return Glm4vConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_start_token_id=token_ids["<|begin_of_image|>"],
        image_end_token_id=token_ids["<|end_of_image|>"],
        image_token_id=token_ids["<|image|>"],
        video_start_token_id=token_ids["<|begin_of_video|>"],
        video_end_token_id=token_ids["<|end_of_video|>"],
        video_token_id=token_ids["<|video|>"],
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )


def build_glm4v_checkpoint(path: str | Path, spec: TinyGlm4vSpec = TinyGlm4vSpec()) -> Path:
    """Write a random-weight GLM-4.1V checkpoint (`Glm4vForConditionalGeneration`) of `spec` to `path`: weights,
    tokenizer with GLM-4.1V's special tokens and chat template, and `preprocessor_config.json` for transformers'
    PIL image processor (`Glm4vImageProcessorPil`). The same spec always gives the same checkpoint."""
    import torch
    from transformers import GenerationConfig, Glm4vForConditionalGeneration, PreTrainedTokenizerFast
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(spec.vocab_size, GLM4V_TOKENS),
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[*ROLE_TOKENS, *GLM4V_TOKENS],
        model_max_length=spec.max_position_embeddings,
    )
    tokenizer.chat_template = GLM4V_CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    token_ids = {token: tokenizer.convert_tokens_to_ids(token) for token in GLM4V_TOKENS}
    eos_token_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pixels_per_token = 2 * 28 * 28  # two temporal copies of a 28 x 28 square (smart_resize counts t * h * w)
    Glm4vImageProcessorPil(
        size={
            "shortest_edge": spec.min_image_tokens * pixels_per_token,
            "longest_edge": spec.max_image_tokens * pixels_per_token,
        },
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    ).save_pretrained(path)

    torch.manual_seed(spec.seed)
    config = _glm4v_config(spec, len(tokenizer), token_ids, eos_token_id)
    model = Glm4vForConditionalGeneration._from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_token_id, pad_token_id=eos_token_id, do_sample=False, max_new_tokens=64
    )
    model.save_pretrained(path, safe_serialization=True)
    (path / RANDOM_WEIGHTS_MARKER).write_text(json.dumps({"random_weights": True, "spec": "glm4v"}))
    logger.info("built a random-weight GLM-4.1V checkpoint at %s", path)
    return path
