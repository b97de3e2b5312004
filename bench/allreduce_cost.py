"""What tensor parallelism's all-reduces cost per decode step on this machine: two gloo ranks on 127.0.0.1.

A decode step of a model split N ways runs two all-reduces per layer (after o_proj and after down_proj), each over
a [batch, hidden_size] tensor. This times one such all-reduce (median of many) for a few widths and batch sizes,
and multiplies by 2 x num_layers for the models named. Run: `python -m bench.allreduce_cost`.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workers.parallel.group import join_group, open_store

# (name, hidden_size, num_hidden_layers) from the checkpoints' config.json; the tiny test model last.
MODELS = (("GLM-4-9B", 4096, 40), ("GLM-4-32B-0414", 6144, 61), ("tiny test GLM", 64, 2))
BATCHES = (1, 8, 32)
REPEATS = 200


def _rank(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    group = join_group(port, rank, 2, torch.device("cpu"), timeout=60)
    for name, hidden, layers in MODELS:
        for batch in BATCHES:
            tensor = torch.randn(batch, hidden)
            for _ in range(10):
                dist.all_reduce(tensor, group=group)
            times = []
            for _ in range(REPEATS):
                start = time.perf_counter()
                dist.all_reduce(tensor, group=group)
                times.append(time.perf_counter() - start)
            if rank == 0:
                one = statistics.median(times)
                print(
                    f"{name:16} batch {batch:3}: one all-reduce of [{batch}, {hidden}] fp32 {one * 1e6:8.1f} us; "
                    f"x {2 * layers} per decode step = {one * 2 * layers * 1e3:7.2f} ms"
                )
    dist.destroy_process_group()


def main() -> None:
    store = open_store(2)
    mp.start_processes(_rank, args=(store.port,), nprocs=2, start_method="spawn")


if __name__ == "__main__":
    main()
