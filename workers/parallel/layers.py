"""The parallel linear layers: a rank's slice of a weight as a plain or bitsandbytes layer, and the all-reduce.

A column-parallel layer is an ordinary linear layer over the rank's rows: nothing to add. A row-parallel layer
computes a partial sum over the rank's input columns, which `RowParallel` sums over the ranks and then adds the
bias once. Quantization happens after slicing, on each rank's slice alone (int8: per output row; nf4: per block
of 64 consecutive weights of a row), so a rank never holds more than its share even while loading. An nf4 shard
equals the same rows of the unsharded nf4 weight exactly when the slice boundaries fall on 64-weight blocks.
"""

from __future__ import annotations

import torch

from workers.parallel.group import all_reduce

# transformers' defaults for BitsAndBytesConfig, so tensor parallel quantizes as the single-process loader does.
INT8_THRESHOLD = 6.0
NF4_BLOCKSIZE = 64


class RowParallel(torch.nn.Module):
    """A row-parallel linear layer: the rank's partial product, summed over the ranks, plus the bias."""

    def __init__(self, inner: torch.nn.Module, bias: torch.Tensor | None, group) -> None:
        super().__init__()
        self.group = group  # the replica's torch.distributed group for the forward's all-reduces
        self.inner = inner
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [..., in / N] -> [..., out], the same on every rank after the all-reduce
        output = all_reduce(self.inner(hidden), self.group)
        return output if self.bias is None else output + self.bias


def make_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    quantization: str,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.nn.Module:
    """A linear layer holding `weight` [out, in] (a rank's slice, on the host) on `device`, quantized as asked."""
    out_features, in_features = weight.shape
    has_bias = bias is not None
    if quantization == "none":
        layer = torch.nn.Linear(in_features, out_features, bias=has_bias, device="meta")
        layer.weight = torch.nn.Parameter(weight.to(device, dtype), requires_grad=False)
    else:
        layer = _bitsandbytes_linear(weight, has_bias, quantization, dtype, device)
    if has_bias:
        layer.bias = torch.nn.Parameter(bias.to(device, dtype), requires_grad=False)
    return layer


def _bitsandbytes_linear(
    weight: torch.Tensor, has_bias: bool, quantization: str, dtype: torch.dtype, device: torch.device
) -> torch.nn.Module:
    import bitsandbytes as bnb

    out_features, in_features = weight.shape
    if quantization == "int8":
        layer = bnb.nn.Linear8bitLt(
            in_features,
            out_features,
            bias=has_bias,
            has_fp16_weights=False,
            threshold=INT8_THRESHOLD,
            device="meta",
        )
        # Moving the host weight to the device quantizes it (Int8Params._quantize).
        layer.weight = bnb.nn.Int8Params(weight.to(dtype), requires_grad=False, has_fp16_weights=False).to(device)
        return layer
    if quantization == "nf4":
        layer = bnb.nn.Linear4bit(
            in_features, out_features, bias=has_bias, compute_dtype=dtype, quant_type="nf4", device="meta"
        )
        param = bnb.nn.Params4bit(
            weight.to(dtype),
            requires_grad=False,
            quant_type="nf4",
            blocksize=NF4_BLOCKSIZE,
            compress_statistics=False,
        )
        layer.weight = param.to(device)  # quantizes (Params4bit._quantize)
        layer.weight.module = layer
        layer.quant_state = layer.weight.quant_state
        return layer
    raise ValueError(f"quantization must be none, int8 or nf4, got {quantization!r}")


def held_bytes(module: torch.nn.Module) -> int:
    """Bytes of weights `module` holds on its device, counting bitsandbytes' scales beside the packed weights."""
    tensors = (*module.parameters(), *module.buffers())
    total = sum(t.numel() * t.element_size() for t in tensors if not t.is_meta)
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None and getattr(state, "absmax", None) is not None:
            total += state.absmax.numel() * state.absmax.element_size()
        scales = getattr(weight, "SCB", None)
        if isinstance(scales, torch.Tensor):
            total += scales.numel() * scales.element_size()
    return total
