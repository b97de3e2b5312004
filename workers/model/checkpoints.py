"""Tiny random-weight checkpoints built locally: the demo model and the test suite's models.

Nothing is downloaded. A byte-level BPE tokenizer is trained in-process on a small multilingual corpus (so
multi-byte characters split across tokens occur), and a causal LM of a real architecture (one of `ARCHITECTURES`)
with a few layers gets random weights. The result is an ordinary Hugging Face checkpoint directory (safetensors,
tokenizer.json, generation_config.json) that `AutoModelForCausalLM` and `AutoTokenizer` load. Its text is noise.
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


def train_tokenizer(vocab_size: int):  # -> tokenizers.Tokenizer
    """Train a byte-level BPE on the built-in corpus; special tokens get the first ids (EOS is 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[EOS_TOKEN, *ROLE_TOKENS],
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
