"""Sharded loading and parallel layers, in two processes over gloo on 127.0.0.1, against the unsharded model.

Each rank loads its slices of a tiny GLM and Llama checkpoint (widths that give nf4 shards a multiple of 64
wide) in fp32, nf4 and int8, and computes logits for one prompt with transformers' own attention; the test
compares them with the single-process model under the same quantization.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from workers.parallel.group import open_store

PROMPT = [[5, 9, 33, 100, 7, 8, 200, 41, 17]]
CASES = [(arch, quant) for arch in ("glm", "llama") for quant in ("none", "nf4", "int8")]


def _rank(rank: int, port: int, paths: dict[str, str], out: str) -> None:
    from workers.parallel.group import join_group, leave_group
    from workers.parallel.loading import load_shard
    from workers.protocol import WorkerConfig

    torch.set_num_threads(1)
    group = join_group(port, rank, 2, torch.device("cpu"), timeout=60)
    results = {}
    for arch, quant in CASES:
        config = WorkerConfig(0, paths[arch], arch, quantization=quant, tensor_parallel_size=2)
        shard = load_shard(config, rank, torch.device("cpu"), torch.float32, group)
        shard.model.set_attn_implementation("sdpa")
        with torch.inference_mode():
            logits = shard.model(torch.tensor(PROMPT)).logits
        results[(arch, quant)] = (logits, shard.weight_bytes, shard.sharded_weight_bytes)
    torch.save(results, f"{out}.{rank}")
    leave_group()


def _reference(path: str, quant: str) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    from workers.model.loader import quantization_config, use_exact_cpu_nf4

    options = {"quantization_config": quantization_config(quant, torch.float32)}
    if quant != "none":
        options["device_map"] = {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **options).eval()
    use_exact_cpu_nf4(model)  # as the engine's loader does (see there)
    with torch.inference_mode():
        return model(torch.tensor(PROMPT)).logits


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[dict, list[dict]]:
    from workers.model.checkpoints import TinyModelSpec, build_checkpoint

    root = tmp_path_factory.mktemp("tp")
    paths = {
        arch: str(
            build_checkpoint(root / arch, TinyModelSpec(architecture=arch, hidden_size=128, intermediate_size=256))
        )
        for arch in ("glm", "llama")
    }
    store = open_store(2)
    mp.start_processes(_rank, args=(store.port, paths, str(root / "out")), nprocs=2, start_method="spawn")
    ranks = [torch.load(root / f"out.{rank}", weights_only=False) for rank in range(2)]
    return paths, ranks


@pytest.mark.parametrize(("arch", "quant"), CASES)
def test_two_ranks_match_one_process(sharded, arch: str, quant: str) -> None:
    paths, ranks = sharded
    expected = _reference(paths[arch], quant)
    got = [ranks[rank][(arch, quant)][0] for rank in range(2)]
    assert torch.equal(got[0], got[1]), "every rank ends the forward with the same logits"
    if quant in ("none", "nf4"):
        # fp32: only the order of the sums differs. nf4: aligned shards quantize to the same blocks.
        torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-5)
    else:
        # int8 scales each weight row by its absmax over the columns a rank holds, and each activation row over
        # the same columns, so a row-parallel shard is quantized differently from the whole row: the two differ
        # by int8's own rounding, which is bounded here by twice int8's error against fp32.
        fp32 = _reference(paths[arch], "none")
        int8_error = (expected - fp32).abs().max().item()
        assert (got[0] - expected).abs().max().item() <= 2 * int8_error
        assert got[0].argmax(-1).tolist() == expected.argmax(-1).tolist()


def test_each_rank_holds_half_of_the_split_weights(sharded) -> None:
    from transformers import AutoModelForCausalLM

    paths, ranks = sharded
    model = AutoModelForCausalLM.from_pretrained(paths["glm"], dtype=torch.float32)
    layer_bytes = sum(p.numel() * 4 for name, p in model.named_parameters() if "_proj." in name)
    for rank in range(2):
        _, total, split = ranks[rank][("glm", "none")]
        assert split == layer_bytes // 2
        tensors = [*model.parameters(), *model.buffers()]  # buffers: the rotary tables
        replicated = sum(t.numel() * t.element_size() for t in tensors) - layer_bytes
        assert total == split + replicated
    assert ranks[0][("glm", "nf4")][2] < ranks[0][("glm", "none")][2] / 4 + 1024 * 8


def test_split_the_model_cannot_take_is_refused() -> None:
    from workers.parallel.split import check_split

    config = {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 256}
    check_split(config, 2)
    with pytest.raises(ValueError, match="--tensor-parallel-size 4: the model's num_key_value_heads is 2"):
        check_split(config, 4)
    with pytest.raises(ValueError, match="pre-quantized"):
        check_split({**config, "quantization_config": {"quant_method": "gptq"}}, 2)
    with pytest.raises(ValueError, match="intermediate_size is 255"):
        check_split({**config, "intermediate_size": 255}, 2)
