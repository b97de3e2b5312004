"""The two worlds meet only in workers/protocol.py: the gateway never imports torch, workers never grpc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules_after_import(modules: list[str]) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sys.modules))"
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return set(output.split())


def _package_modules(package: str) -> list[str]:
    return [
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name != "__init__.py"
    ]


def test_gateway_does_not_import_torch_or_transformers() -> None:
    loaded = _modules_after_import(_package_modules("autoglm_rpc"))
    assert "torch" not in loaded
    assert "transformers" not in loaded


def test_workers_do_not_import_grpc() -> None:
    loaded = _modules_after_import(_package_modules("workers"))
    assert not {name for name in loaded if name == "grpc" or name.startswith(("grpc.", "autoglm_rpc"))}


def test_protocol_uses_the_standard_library_only() -> None:
    loaded = _modules_after_import(["workers.protocol"])
    assert not {name for name in loaded if name.split(".")[0] in {"torch", "grpc", "numpy", "google"}}
