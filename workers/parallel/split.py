"""Whether a checkpoint can be split N ways, from its config.json alone (standard library only).

The gateway calls `check_split` before it starts any worker, so a split the model cannot take ends the server
at start with a message naming `--tensor-parallel-size`; the ranks call it again on the config they load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FLAG = "--tensor-parallel-size"


def check_split(config: Mapping[str, Any], size: int) -> None:
    """Raise ValueError naming `--tensor-parallel-size` when the model in `config` cannot be split `size` ways.

    Attention heads, KV heads and the MLP width must divide by `size` (q/k/v are split by heads, the MLP by its
    intermediate width), and the checkpoint must not be pre-quantized: a pre-quantized tensor cannot be sliced
    before it is dequantized, and each rank quantizes its own slices instead (`--quantization`).
    """
    if size < 1:
        raise ValueError(f"{FLAG} must be at least 1, got {size}")
    if size == 1:
        return
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else config
    if config.get("quantization_config") is not None:
        method = config["quantization_config"].get("quant_method", "a quantization method")
        raise ValueError(
            f"{FLAG} {size}: the checkpoint is pre-quantized ({method}); tensor parallelism slices full-precision "
            "weights and quantizes each slice (--quantization), so serve an unquantized checkpoint"
        )
    num_heads = _positive(text, "num_attention_heads", size)
    widths = {
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(text.get("num_key_value_heads") or num_heads),
        "intermediate_size": _positive(text, "intermediate_size", size),
    }
    for name, value in widths.items():
        if value % size:
            raise ValueError(
                f"{FLAG} {size}: the model's {name} is {value}, which does not divide by {size}; choose a "
                f"{FLAG} that divides {value}"
            )


def _positive(config: Mapping[str, Any], name: str, size: int) -> int:
    value = config.get(name)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{FLAG} {size}: config.json states no {name}, so the model cannot be split")
    return value
