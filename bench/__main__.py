"""`python -m bench cpu|gpu|plot`: the benchmark's command line (see `bench/__init__.py` and docs/performance.md).

    python -m bench cpu [--concurrency 1,4,16,64] [--out bench-results/cpu]
    python -m bench gpu --dtype bf16|nf4 --prompt-len 256 --new-tokens 128 --concurrency 1,16,64,256 \\
        --out bench-results/gpu-bf16
    python -m bench plot bench-results/gpu-bf16/bench.json      # the PNG, later, where matplotlib is
    python -m bench merge part1/bench.json part2/bench.json --out bench-results/gpu-bf16   # a run split in parts
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.workload import parse_levels

_DEFAULTS = {
    # The demo checkpoint on a few CPU cores: a few minutes in all.
    "cpu": {"prompt_len": 64, "new_tokens": 64, "concurrency": "1,4,16,64", "min_requests": 16,
            "systems": "hf_generate,hf_static_batch,engine,service,service_http,grpc_floor,hf_serve",
            "max_num_batched_tokens": 512,
            "client_processes": 1, "threads": 1, "out": "bench-results/cpu"},
    # Issue 4's workload on one GPU.
    "gpu": {"prompt_len": 256, "new_tokens": 128, "concurrency": "1,16,64,256", "min_requests": 4,
            "systems": "hf_generate,hf_static_batch,hf_continuous_batching,hf_cuda_graph,engine,service,"
                       "service_http,grpc_floor,hf_serve",
            "max_num_batched_tokens": 2048, "client_processes": 4, "threads": None, "out": None},
}  # fmt: skip


def _run_parser(commands: argparse._SubParsersAction, kind: str, help_text: str) -> None:
    defaults = _DEFAULTS[kind]
    parser = commands.add_parser(kind, help=help_text)
    if kind == "gpu":
        parser.add_argument("--dtype", choices=("bf16", "nf4"), default="bf16", help="bf16 weights, or nf4")
    parser.add_argument("--prompt-len", type=int, default=defaults["prompt_len"], help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=defaults["new_tokens"], help="output tokens per request")
    parser.add_argument("--concurrency", default=defaults["concurrency"], help="levels, e.g. 1,16,64,256")
    parser.add_argument(
        "--min-requests", type=int, default=defaults["min_requests"], help="requests per level at least"
    )
    parser.add_argument("--systems", default=defaults["systems"], help="comma-separated systems to run")
    parser.add_argument(
        "--max-num-batched-tokens", type=int, default=defaults["max_num_batched_tokens"], help="engine budget"
    )
    parser.add_argument(
        "--client-processes", type=int, default=defaults["client_processes"], help="gRPC client processes"
    )
    parser.add_argument("--checkpoint-dir", type=Path, help="build the checkpoint here and keep it")
    parser.add_argument("--model", type=Path, help="benchmark this existing checkpoint instead of building one")
    parser.add_argument("--seed", type=int, default=0, help="prompt seed")
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults["threads"],
        help="torch threads of the bench process and the worker",
    )
    parser.add_argument("--out", type=Path, default=defaults["out"], help="results directory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _run_parser(commands, "cpu", "the demo checkpoint on the CPU: HF generate() against the engine and service")
    _run_parser(commands, "gpu", "the GLM-4-9B shape on a CUDA GPU: every baseline, the engine, the service")
    plot = commands.add_parser("plot", help="render the PNG of a finished run from its JSON")
    plot.add_argument("report", type=Path, help="a bench.json")
    plot.add_argument("--out", type=Path, help="PNG path (default: next to the JSON)")
    merge = commands.add_parser(
        "merge", help="one report from runs of one workload that measured different systems"
    )
    merge.add_argument("reports", type=Path, nargs="+", help="bench.json files")
    merge.add_argument("--out", type=Path, required=True, help="results directory for the merged report")
    return parser


def _run(args: argparse.Namespace) -> int:
    from bench.harness import BenchOptions, own_failures, run_bench

    quantization = "nf4" if getattr(args, "dtype", "bf16") == "nf4" else "none"
    if args.command == "gpu":
        import torch

        if not torch.cuda.is_available():
            logging.error("python -m bench gpu needs a CUDA GPU; torch %s sees none", torch.__version__)
            return 2
    out = args.out or Path(f"bench-results/gpu-{args.dtype}")
    try:
        options = BenchOptions(
            kind=args.command,
            out_dir=out,
            prompt_len=args.prompt_len,
            new_tokens=args.new_tokens,
            concurrency=parse_levels(args.concurrency),
            min_requests=args.min_requests,
            systems=tuple(s.strip() for s in args.systems.split(",") if s.strip()),
            quantization=quantization,
            max_num_batched_tokens=args.max_num_batched_tokens,
            client_processes=args.client_processes,
            seed=args.seed,
            checkpoint_dir=args.checkpoint_dir,
            model_path=args.model,
            threads=args.threads or None,
        )
    except ValueError as exc:
        logging.error("%s", exc)
        return 2
    report = run_bench(options)
    sys.stdout.write((out / "bench.md").read_text())
    # A peer baseline that cannot run here is reported, not a failure: only the project's own systems fail a run.
    return 1 if own_failures(report) else 0


def _plot(args: argparse.Namespace) -> int:
    from bench.plot import write_plot

    report = json.loads(args.report.read_text())
    path = write_plot(report, args.out or args.report.with_suffix(".png"))
    if path is None:
        logging.error("matplotlib is not installed: pip install matplotlib (or pip install -e '.[bench]')")
        return 2
    logging.info("wrote %s", path)
    return 0


def _merge(args: argparse.Namespace) -> int:
    from bench.plot import write_plot
    from bench.report import merge_reports, write_report

    try:
        report = merge_reports([json.loads(path.read_text()) for path in args.reports])
    except ValueError as exc:
        logging.error("%s", exc)
        return 2
    json_path, md_path = write_report(report, args.out)
    if write_plot(report, args.out / "bench.png") is None:
        logging.warning("matplotlib is not installed: no PNG. Later: python -m bench plot %s", json_path)
    sys.stdout.write(md_path.read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    handlers = {"plot": _plot, "merge": _merge}
    return handlers.get(args.command, _run)(args)


if __name__ == "__main__":
    sys.exit(main())
