"""Builds one rank's model: the decoder's linear layers from the rank's slices, everything else whole.

The model's skeleton is made on the `meta` device (no memory, no random initialisation); then every split
linear layer is replaced by one built from the rank's slices (`safe_open(...).get_slice`: only those bytes are
read) and quantized on its own, and every remaining weight is read whole. Buffers computed at construction (the
rotary tables) are rebuilt on the device. A decoder-layer linear layer the layout does not know is refused, not
replicated: a replicated o_proj would be summed N times by the all-reduce.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from workers.kv.attention import register_attention
from workers.model.loader import use_exact_cpu_nf4
from workers.parallel.layers import RowParallel, held_bytes, make_linear
from workers.parallel.sharding import Split, shard_range, split_of
from workers.parallel.split import check_split
from workers.protocol import WorkerConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Shard:
    """A rank's model and the bytes of weights it holds: all of them, and those of its split layers."""

    model: torch.nn.Module
    weight_bytes: int
    sharded_weight_bytes: int


class WeightFiles:
    """Lazy access to a checkpoint's safetensors by tensor name, across shards of the file."""

    def __init__(self, directory: Path) -> None:
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._file_of = {name: directory / file for name, file in weight_map.items()}
        else:
            self._file_of = {}
            for path in sorted(directory.glob("*.safetensors")):
                with safe_open(path, framework="pt") as handle:
                    self._file_of.update(dict.fromkeys(handle.keys(), path))
        if not self._file_of:
            raise ValueError(f"model: {directory} has no safetensors weights, which tensor parallelism reads")
        self._handles: dict[Path, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def handle(self, name: str):
        path = self._file_of[name]
        if path not in self._handles:
            self._handles[path] = safe_open(path, framework="pt")
        return self._handles[path]

    def full(self, name: str) -> torch.Tensor:
        return self.handle(name).get_tensor(name)

    def part(self, name: str, split: Split, rank: int, size: int) -> torch.Tensor:
        """Rank `rank`'s slice of weight or bias `name` under `split`; a row split's bias is read whole."""
        tensor = self.handle(name).get_slice(name)
        rows = tensor.get_shape()[0]
        if split is Split.COLUMN:
            return tensor[shard_range(rows, rank, size)]
        if split is Split.COLUMN_PAIR:
            half = shard_range(rows // 2, rank, size)
            upper = slice(rows // 2 + half.start, rows // 2 + half.stop)
            return torch.cat([tensor[half], tensor[upper]])
        if len(tensor.get_shape()) == 1:
            return tensor[:]
        return tensor[:, shard_range(tensor.get_shape()[1], rank, size)]


def load_shard(
    config: WorkerConfig, rank: int, device: torch.device, dtype: torch.dtype, group, *, has_lm_head: bool = True
) -> Shard:
    """Rank `rank`'s model of `config.tensor_parallel_size` on `device`, quantized as `config` says; its
    row-parallel layers all-reduce in `group` (see `workers.parallel.group.join_group`).

    Without `has_lm_head` the LM head stays on `meta` (no memory): the ranks that never compute logits (all but
    rank 0 in the engine) skip its vocab_size x hidden_size weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    size = config.tensor_parallel_size
    options = {"trust_remote_code": config.trust_remote_code, "local_files_only": not config.allow_download}
    model_config = AutoConfig.from_pretrained(config.model_path, **options)
    check_split(model_config.to_dict(), size)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            model_config,
            dtype=dtype,
            attn_implementation=register_attention(),
            trust_remote_code=config.trust_remote_code,
        )
    files = WeightFiles(Path(config.model_path))
    sharded = _replace_split_layers(
        model, files, config.quantization, rank, size=size, place=(dtype, device, group)
    )
    _refuse_unknown_layers(model)
    _load_replicated(model, files, dtype, device, skip=() if has_lm_head else ("lm_head.weight",))
    _rebuild_buffers(model, device)
    model.eval()
    use_exact_cpu_nf4(model)
    total = held_bytes(model)
    logger.info(
        "rank %d/%d holds %.1f MiB of weights (%.1f MiB of them split) on %s",
        rank, size, total / 2**20, sharded / 2**20, device,
    )  # fmt: skip
    return Shard(model=model, weight_bytes=total, sharded_weight_bytes=sharded)


def _replace_split_layers(model, files: WeightFiles, quantization: str, rank: int, *, size: int, place) -> int:
    """Swap each split linear layer for one over the rank's slice; returns the bytes they hold.

    place: (dtype, device, group) of the new layers: their weights' dtype and device, the all-reduce's group."""
    dtype, device, group = place
    num_bytes = 0
    for name, module in list(model.named_modules()):
        split = split_of(name)
        if split is None:
            continue
        weight = files.part(f"{name}.weight", split, rank, size)
        bias = None
        if getattr(module, "bias", None) is not None:
            bias = files.part(f"{name}.bias", split, rank, size)
        if split is Split.ROW:
            layer = RowParallel(make_linear(weight, None, quantization, dtype, device), None, group)
            if bias is not None:
                layer.bias = torch.nn.Parameter(bias.to(device, dtype), requires_grad=False)
        else:
            layer = make_linear(weight, bias, quantization, dtype, device)
        model.set_submodule(name, layer)
        num_bytes += held_bytes(layer)
    return num_bytes


def _refuse_unknown_layers(model: torch.nn.Module) -> None:
    for name, module in model.named_modules():
        if ".layers." in name and isinstance(module, torch.nn.Linear) and module.weight.is_meta:
            raise ValueError(
                f"--tensor-parallel-size: {type(model).__name__} has a linear layer {name!r} that the engine does "
                "not know how to split; serve it with --tensor-parallel-size 1"
            )


def _load_replicated(model: torch.nn.Module, files: WeightFiles, dtype, device, skip: tuple[str, ...]) -> None:
    """Read each weight still on `meta` whole (embeddings, norms, LM head); tie a LM head the file lacks."""
    for name, param in list(model.named_parameters()):
        if not param.is_meta or name in skip:
            continue
        module_name, _, attribute = name.rpartition(".")
        module = model.get_submodule(module_name)
        if name not in files and name == "lm_head.weight" and model.config.tie_word_embeddings:
            module.weight = model.get_input_embeddings().weight
            continue
        if name not in files:
            raise ValueError(f"model: the checkpoint has no weight {name!r}")
        tensor = files.full(name).to(device, dtype)
        setattr(module, attribute, torch.nn.Parameter(tensor, requires_grad=False))


def _rebuild_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """Re-run the constructor of every module whose buffers are still on `meta` (rotary embeddings)."""
    for name, module in list(model.named_modules()):
        if any(buffer.is_meta for buffer in module.buffers(recurse=False)):
            with torch.device(device):
                model.set_submodule(name, type(module)(module.config))
