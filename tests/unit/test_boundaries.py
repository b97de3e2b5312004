"""The two worlds meet in workers/protocol.py: the gateway never imports torch, the workers never grpc."""

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


WEB_FRAMEWORK = ("fastapi", "starlette", "uvicorn")


def _roots(loaded: set[str], roots: tuple[str, ...]) -> set[str]:
    return {name for name in loaded if name.split(".")[0] in roots}


def test_workers_do_not_import_grpc_or_the_web_framework() -> None:
    loaded = _modules_after_import(_package_modules("workers"))
    assert not {name for name in loaded if name == "grpc" or name.startswith(("grpc.", "autoglm_rpc"))}
    assert not _roots(loaded, WEB_FRAMEWORK)


CORE = [*_package_modules("autoglm_rpc/core"), "autoglm_rpc.security.rate_limit",
        *_package_modules("autoglm_rpc/pool"), *_package_modules("autoglm_rpc/text")]  # fmt: skip


def test_the_request_core_imports_neither_grpc_nor_the_web_framework() -> None:
    """The front end, the pool, text handling and the error taxonomy serve both protocols: each edge (the gRPC
    servicers, the HTTP routes) converts to and from them, and maps the taxonomy to its own statuses."""
    loaded = _modules_after_import(CORE)
    assert not _roots(loaded, ("grpc", "google", "autoglm", *WEB_FRAMEWORK))


def test_only_the_http_edge_imports_the_web_framework() -> None:
    """The front end, the pool, text handling and telemetry (its HTTP middleware is plain ASGI) serve both
    protocols; FastAPI, Starlette and uvicorn stay in `openai_api/`, which the server imports only when the HTTP
    face is on (so a gRPC-only server, as the GPU check runs it, needs no web stack installed)."""
    modules = [m for m in _package_modules("autoglm_rpc") if not m.startswith("autoglm_rpc.openai_api")]
    assert not _roots(_modules_after_import([*modules, "bench.client_process", "bench.harness"]), WEB_FRAMEWORK)


def test_protocol_uses_the_standard_library_only() -> None:
    loaded = _modules_after_import(["workers.protocol", "workers.parallel.split"])
    assert not {name for name in loaded if name.split(".")[0] in {"torch", "grpc", "numpy", "google"}}


def test_gateway_reaches_workers_only_through_the_protocol() -> None:
    """Besides protocol.py, the gateway names only the spawn trampoline (entry.py) and the tensor-parallel split
    check (parallel/split.py), both standard library only; the CLI's `demo-model` command builds a checkpoint,
    lazily, in its own process."""
    import ast

    allowed = {"workers.protocol", "workers.process.entry", "workers.parallel.split"}
    found = set()
    for path in (ROOT / "autoglm_rpc").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "workers":
                package = (ROOT / node.module.replace(".", "/")).is_dir()
                names = {f"{node.module}.{a.name}" for a in node.names} if package else {node.module}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names if a.name.split(".")[0] == "workers"}
            else:
                continue
            found |= {(path.name, name) for name in names - allowed}
    assert found == {("cli.py", "workers.model.checkpoints")}
