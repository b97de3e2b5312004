"""Loads a checkpoint for the engine: weights (optionally quantized), the KV cache and the model's facts.

The model is a plain `AutoModelForCausalLM` whose attention implementation is the engine's (see
`workers.kv.attention`), or for a vision-language checkpoint of `VISION_ARCHITECTURES` (GLM-4.1V) its
image-text-to-text class, the language model on the engine's attention and the vision tower on SDPA, with its image
path (`workers.model.vision.VisionModel`). Loading is local-only unless the worker config allows downloads,
safetensors only, and runs remote code only when configured. Every choice that cannot work on this machine fails
here with a message that names the option, before the worker reports Ready.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from workers.kv.attention import ATTENTION_NAME, register_attention
from workers.kv.blocks import blocks_for
from workers.kv.cache import CacheSpec, PagedKVCache, blocks_that_fit
from workers.model.manifest import verify_checkpoint
from workers.model.support import (
    VISION_ARCHITECTURES,
    architecture_of,
    check_causal_lm,
    check_supported,
    is_vision_architecture,
)
from workers.model.vision import VisionModel
from workers.protocol import ModelInfo, WorkerConfig

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float], None]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_QUANTIZATIONS = ("none", "int8", "nf4")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # torch.load formats: unpickling runs code


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model ready for the engine: weights on the device, its KV cache allocated, its facts for the gateway."""

    model: torch.nn.Module
    cache: PagedKVCache
    info: ModelInfo  # info.max_context_tokens is the context limit, at most what the cache holds
    mirror: Callable | None = None  # tensor parallelism: sends each forward to the other ranks (ModelRunner)
    vision: VisionModel | None = None  # a vision-language model's image path; None: prompts are text only


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' (or 'gpu') to a device that exists here, else a ValueError saying why not."""
    normalized = name.strip().lower()
    if normalized == "gpu":
        normalized = "cuda"
    if normalized == "cpu":
        return torch.device("cpu")
    if not normalized.startswith("cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' (optionally 'cuda:N'), got {name!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} needs a CUDA GPU, but torch {torch.__version__} sees none")
    device = torch.device(normalized)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is float32 on the CPU and bfloat16 on CUDA; float32, bfloat16 and float16 are taken as given."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if name not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def quantization_config(name: str, dtype: torch.dtype):  # -> BitsAndBytesConfig | None
    """transformers' bitsandbytes config for 'int8' or 'nf4' (computing in `dtype`); None for 'none'."""
    if name not in _QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {_QUANTIZATIONS}, got {name!r}")
    if name == "none":
        return None
    for package in ("bitsandbytes", "accelerate"):
        if importlib.util.find_spec(package) is None:
            raise ValueError(
                f"--quantization {name} needs the {package!r} package (transformers' bitsandbytes integration "
                f"requires it): pip install {package}"
            )
    from transformers import BitsAndBytesConfig

    if name == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def load_model(config: WorkerConfig, on_progress: ProgressCallback) -> LoadedModel:
    """Load weights, check the model fits the engine, allocate the KV cache; reports progress as it goes.

    One whole model in this process: a tensor-parallel replica loads through `parallel.ranks.load_replica`
    (`workers.process.load` picks which)."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    quantization = quantization_config(config.quantization, dtype)
    check_checkpoint_files(config, on_progress)
    on_progress("loading weights", 0.0)
    model = _from_pretrained(config, device, dtype, quantization)
    check_supported(model, ATTENTION_NAME)
    vision = None
    if is_vision_architecture(architecture_of(model)):
        vision = VisionModel.load(model, config.model_path, local_files_only=not config.allow_download)
    # The language model's facts: a multimodal checkpoint (Gemma 3) keeps them in its text config.
    text_config = model.config.get_text_config()
    max_seq_len = resolve_max_seq_len(config.max_seq_len, text_config)
    on_progress("allocating KV cache", 0.8)
    # The cache holds K/V in the dtype the layers compute in, which is the embeddings' dtype even when quantized.
    cache_dtype = model.get_input_embeddings().weight.dtype
    spec = plan_cache(text_config, config, max_seq_len, cache_dtype, device)
    max_seq_len = fit_context(max_seq_len, spec.num_tokens)
    cache = PagedKVCache(spec)
    on_progress("model loaded", 0.9)
    info = model_info(config, model, spec, max_seq_len)
    return LoadedModel(model=model, cache=cache, info=info, vision=vision)


def model_info(
    config: WorkerConfig, model: torch.nn.Module, spec: CacheSpec, max_seq_len: int, ranks: tuple = ()
) -> ModelInfo:
    """The loaded model's facts for the gateway; `ranks` lists a tensor-parallel replica's `RankInfo`s."""
    return ModelInfo(
        model_id=config.model_id,
        source=config.model_path,
        architecture=(model.config.architectures or [type(model).__name__])[0],
        dtype=str(spec.dtype).removeprefix("torch."),
        quantization=config.quantization,
        device=str(spec.device),
        max_context_tokens=max_seq_len,
        max_batch_size=config.max_batch_size,
        vocab_size=model.get_output_embeddings().weight.shape[0],
        kv_cache_blocks=spec.num_blocks - 1,
        kv_block_size=spec.block_size,
        prefix_caching=config.enable_prefix_caching,
        ranks=ranks,
    )


def check_declared_model(config: WorkerConfig) -> None:
    """Refuse a checkpoint that is no causal LM from its config.json alone, before any file is hashed or weight
    read (`model_support.check_causal_lm`). A config.json that cannot be read is left to transformers to report."""
    try:
        declared = json.loads((Path(config.model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return
    if isinstance(declared, dict):
        check_causal_lm(declared, config.trust_remote_code)


def check_checkpoint_files(config: WorkerConfig, on_progress: ProgressCallback) -> None:
    """Before any weight is read: the manifest matches (when configured), and the weights are safetensors unless
    pickle weights are allowed (unpickling a `.bin` file can run arbitrary code)."""
    directory = Path(config.model_path)
    if config.weights_manifest:
        on_progress("verifying checkpoint files", 0.0)
        verify_checkpoint(directory, Path(config.weights_manifest))
        logger.info("checkpoint files match %s", config.weights_manifest)
    if not directory.is_dir() or config.allow_pickle_weights:
        return
    suffixes = {path.suffix for path in directory.iterdir() if path.is_file()}
    if ".safetensors" not in suffixes and suffixes.intersection(_PICKLE_SUFFIXES):
        raise ValueError(
            f"model: {directory} has only pickle weights (.bin/.pt), which can run code when loaded; convert "
            "them to safetensors, or set allow_pickle_weights if you trust this checkpoint"
        )


def _declared_architecture(config: WorkerConfig) -> str | None:
    """`architectures[0]` of a local checkpoint's config.json, or None (a hub id, or no such field)."""
    config_file = Path(config.model_path) / "config.json"
    if not config_file.is_file():
        return None
    return (json.loads(config_file.read_text()).get("architectures") or [None])[0]


def _from_pretrained(config: WorkerConfig, device: torch.device, dtype: torch.dtype, quantization):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # bitsandbytes' int8 matmul on the CPU says on every call that it casts to float16; once is enough.
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    placement = {}
    if quantization is not None or importlib.util.find_spec("accelerate") is not None:
        placement["device_map"] = {"": device}  # load straight onto the device
    model_class, attention = AutoModelForCausalLM, register_attention()
    if _declared_architecture(config) in VISION_ARCHITECTURES:
        # The vision tower attends within each image with no cache: transformers' SDPA, not the engine's.
        model_class, attention = AutoModelForImageTextToText, {"text_config": attention, "vision_config": "sdpa"}
    model = model_class.from_pretrained(
        config.model_path,
        dtype=dtype,
        quantization_config=quantization,
        local_files_only=not config.allow_download,
        use_safetensors=None if config.allow_pickle_weights else True,
        trust_remote_code=config.trust_remote_code,
        attn_implementation=attention,
        **placement,
    )
    if not placement:
        model = model.to(device)
    model.eval()
    use_exact_cpu_nf4(model)
    logger.info(
        "loaded %s (%s, %s, quantization=%s) on %s",
        config.model_path,
        type(model).__name__,
        dtype,
        config.quantization,
        device,
    )
    return model


def use_exact_cpu_nf4(model: torch.nn.Module) -> None:
    """Keep nf4 layers' outputs in their compute dtype on the CPU.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks nf4 weights at the first forward for a kernel whose
    output is rounded to bfloat16. A tensor-parallel row-parallel layer would then round each rank's partial
    sum before the all-reduce, and a replica split N ways would answer differently from a whole one. The
    generic kernel computes in the layer's compute dtype (float32 on the CPU), so every split gives the same
    tokens; the CPU is not where nf4 is served fast anyway.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def resolve_max_seq_len(requested: int | None, model_config) -> int:
    """The context limit: the requested one, which must not exceed the checkpoint's, or the checkpoint's own."""
    names = ("max_position_embeddings", "seq_length", "max_sequence_length")
    limit = next((getattr(model_config, n) for n in names if getattr(model_config, n, None)), None)
    if requested is None:
        if limit is None:
            raise ValueError("the checkpoint states no context length; set max_seq_len")
        return int(limit)
    if limit is not None and requested > limit:
        raise ValueError(f"max_seq_len {requested} exceeds the checkpoint's context length {limit}")
    return requested


def plan_cache(
    model_config, config: WorkerConfig, max_seq_len: int, dtype: torch.dtype, device: torch.device
) -> CacheSpec:
    """Size the paged cache: exactly `kv_cache_tokens` when set, else `kv_cache_memory_fraction` of the memory
    free now (after the weights loaded). On the CPU that memory is the host's, shared with everything else, so
    there the fraction gives at most what a full batch of full contexts needs (max_batch_size x max_seq_len).
    With tensor parallelism a block holds this rank's KV heads (num_key_value_heads / tensor_parallel_size).
    Raises ValueError when not one block fits."""
    one_block = CacheSpec.for_model(
        model_config, 1, dtype, device,
        block_size=config.kv_block_size, tensor_parallel_size=config.tensor_parallel_size,
    )  # fmt: skip
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        where = "GPU memory"
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        where = "host memory"
    fraction = config.kv_cache_memory_fraction
    num_blocks = blocks_that_fit(
        one_block.bytes_per_block, config.kv_block_size, free, fraction, config.kv_cache_tokens
    )
    if device.type == "cpu" and config.kv_cache_tokens is None:
        num_blocks = min(num_blocks, 1 + config.max_batch_size * blocks_for(max_seq_len, config.kv_block_size))
    if num_blocks < 2:
        raise ValueError(
            f"the KV cache needs {one_block.bytes_per_block / 2**20:.2f} MiB per block of {config.kv_block_size} "
            f"tokens, but {fraction:.0%} of the {free / 2**30:.1f} GiB of free {where} is less; lower "
            "kv_block_size or raise kv_cache_memory_fraction"
        )
    spec = dataclasses.replace(one_block, num_blocks=num_blocks)
    if config.kv_cache_tokens is not None and spec.num_bytes > free:
        raise ValueError(
            f"kv_cache_tokens {config.kv_cache_tokens} needs {spec.num_bytes / 2**30:.2f} GiB, more than the "
            f"{free / 2**30:.1f} GiB of free {where}"
        )
    return spec


def fit_context(max_seq_len: int, cache_tokens: int) -> int:
    """The context limit: `max_seq_len`, or what the whole cache holds when that is less (a request alone must
    always fit, so that preemption can always make room for it)."""
    if cache_tokens >= max_seq_len:
        return max_seq_len
    logger.warning(
        "the KV cache holds %d tokens, fewer than max_seq_len %d: the context limit is %d tokens; raise "
        "kv_cache_tokens or kv_cache_memory_fraction for longer contexts",
        cache_tokens, max_seq_len, cache_tokens,
    )  # fmt: skip
    return cache_tokens
