"""The checkpoint stage: build the model every later stage serves, once, into a folder.

    python -m tools.gpu_check.checkpoint --shape glm4-9b --out DIR   # random-init GLM-4-9B shape, bf16, on CUDA
    python -m tools.gpu_check.checkpoint --shape demo --out DIR      # the demo checkpoint (the CPU rehearsal)

Both are `bench.checkpoints`' builders, so the check benchmarks exactly what `make bench-gpu` / `make bench` do.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

SHAPES = ("glm4-9b", "demo")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m tools.gpu_check.checkpoint", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--shape", choices=SHAPES, required=True)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    args = parser.parse_args(argv)

    from bench import checkpoints

    started = time.perf_counter()
    if args.shape == "glm4-9b":
        checkpoint = checkpoints.glm4_9b_checkpoint(args.out, "cuda", "bfloat16")
    else:
        checkpoint = checkpoints.tiny_checkpoint(args.out)
    checkpoint.model = None
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    logging.info(
        "%s: %.2f GB at %s in %.1fs",
        checkpoint.description["name"],
        size / 1e9,
        args.out,
        time.perf_counter() - started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
