"""The preflight stage: does everything the later stages need import here, and what is this machine?

Imports the gateway, the workers, the benchmark and the OTLP/gRPC exporter, records the versions that matter
and the GPU, and (with `--require-cuda`) checks that torch sees a CUDA device and that bitsandbytes quantizes to
nf4 on it. Writes one JSON object to `--out`; exits non-zero when an import or a check fails.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import shutil
import subprocess
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

MODULES = (
    "autoglm_rpc.startup.server",
    "autoglm_rpc.client",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "workers.process.worker",
    "workers.model.loader",
    "bench.harness",
    "bitsandbytes",
    "accelerate",
)
DISTRIBUTIONS = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "accelerate",
    "bitsandbytes",
    "grpcio",
    "protobuf",
    "grpcio-health-checking",
    "opentelemetry-sdk",
    "pytest",
)


def check(require_cuda: bool) -> dict[str, Any]:
    """The facts and the problems found (`problems` empty when every check passed)."""
    problems: list[str] = []
    for module in MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:
            problems.append(f"import {module}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
    facts: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    facts["versions"] = {name: _version(name) for name in DISTRIBUTIONS}
    try:
        facts |= _torch_facts(require_cuda, problems)
    except Exception as exc:  # torch itself does not import: the facts stay partial, the problem is said
        problems.append(f"torch: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    facts["nvidia_smi"] = _nvidia_smi()
    facts["problems"] = problems
    return facts


def _torch_facts(require_cuda: bool, problems: list[str]) -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if not torch.cuda.is_available():
        if require_cuda:
            problems.append(f"torch {torch.__version__} sees no CUDA device")
        return facts
    properties = torch.cuda.get_device_properties(0)
    facts |= {
        "gpu": properties.name,
        "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
        "compute_capability": f"{properties.major}.{properties.minor}",
        "multiprocessors": properties.multi_processor_count,
    }
    try:
        import bitsandbytes.functional as bnb

        weights = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)  # [out, in]
        packed, state = bnb.quantize_4bit(weights, quant_type="nf4")
        error = (bnb.dequantize_4bit(packed, state) - weights).abs().mean().item()
        facts["nf4_roundtrip_mean_abs_error"] = error
        if not error < 0.2:
            problems.append(f"bitsandbytes nf4 round trip is off on this GPU: mean error {error:.3f}")
    except Exception as exc:
        problems.append(f"bitsandbytes nf4 on CUDA: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    return facts


def _nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    query = [
        "nvidia-smi",
        "--query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,temperature.gpu",
        "--format=csv,noheader",
    ]
    try:
        return subprocess.run(query, capture_output=True, text=True, timeout=20, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi failed: {exc}"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.gpu_check.preflight", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON file")
    parser.add_argument("--require-cuda", action="store_true", help="fail without a CUDA device")
    args = parser.parse_args(argv)
    facts = check(args.require_cuda)
    args.out.write_text(json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts, indent=2))
    return 1 if facts["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
