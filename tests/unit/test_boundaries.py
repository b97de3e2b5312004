"""Which package may import which. The two worlds meet in workers/protocol.py: the gateway never imports torch,
the workers never grpc.

The rules are the tables below, checked against every import statement of the source, at module level or inside
a function (a lazy import is a dependency all the same). Run-time checks stand beside them for what a module
loads through the libraries it imports: the gateway never loads torch or transformers, the workers never grpc,
and only the HTTP face loads the web framework.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEB_FRAMEWORK = ("fastapi", "starlette", "uvicorn")

# The workers' layers, lowest first: a module imports modules of its own layer or of lower ones, never higher.
WORKER_LAYERS = (
    "workers.protocol",  # the typed pipe messages (standard library only)
    "workers.signals",  # the worker processes' signal policy (standard library only)
    "workers.telemetry",  # spans, logs, the step probe
    "workers.kv",  # the paged KV cache and the attention over it
    "workers.model",  # checkpoints: loading, what the engine supports, manifests
    "workers.engine",  # continuous batching over a loaded model
    "workers.parallel",  # tensor parallelism: the ranks, over the engine's runner
    "workers.process",  # the worker process: entry, loop, and which load (whole model or replica)
)

FACES = ("autoglm_rpc.grpc_api", "autoglm_rpc.openai_api")
STARTUP = "autoglm_rpc.startup"

# Importer (a package, or a module) -> what its imports must not name (module paths, with what lies under them).
FORBIDDEN = {
    "workers": ("grpc", *WEB_FRAMEWORK, "autoglm_rpc", "autoglm"),
    "autoglm_rpc": ("torch", "transformers"),
    "autoglm_rpc.core": ("grpc", "google", "autoglm", *WEB_FRAMEWORK, *FACES, STARTUP),
    "autoglm_rpc.grpc_api": ("autoglm_rpc.openai_api", *WEB_FRAMEWORK, STARTUP),
    "autoglm_rpc.openai_api": ("autoglm_rpc.grpc_api", STARTUP),
    "autoglm_rpc.pool": (*FACES, STARTUP),
    "autoglm_rpc.text": (*FACES, STARTUP),
    # Images: protocol-neutral like the core (which calls it), and below it: it never imports the front end.
    "autoglm_rpc.media": (
        "grpc",
        "google",
        "autoglm",
        *WEB_FRAMEWORK,
        *FACES,
        STARTUP,
        "autoglm_rpc.pool",
        "autoglm_rpc.core.frontend",
        "autoglm_rpc.core.request_run",
    ),
    "autoglm_rpc.security": (*FACES, STARTUP),
    "autoglm_rpc.telemetry": (*FACES, STARTUP),
    "autoglm_rpc.client": (*FACES, STARTUP, "autoglm_rpc.core"),  # the public client stands alone
}
# Imported only from within -> by whom: nothing outside startup/ imports it (it wires every other part).
ONLY_FROM = {STARTUP: (STARTUP,)}

# The gateway reaches workers through these modules only, and only from where named (the first three are standard
# library only).
GATEWAY_TO_WORKERS = {
    "workers.protocol": "autoglm_rpc",  # the pipe's messages, anywhere in the gateway
    "workers.process.entry": "autoglm_rpc.pool",  # the spawn target the pool starts worker processes with
    "workers.parallel.split": "autoglm_rpc.startup",  # refuses a bad tensor-parallel split before any start
    "workers.model.checkpoints": "autoglm_rpc.startup.cli",  # `demo-model`: lazily, in its own process
}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").is_file()


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module an import statement of `path` names, with its line: `from a import b` names `a.b` when that
    is a module of this repository, else `a`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{path}:{node.lineno}: relative imports are not used here"
            yield node.module, node.lineno
            for alias in node.names:
                if _is_module(f"{node.module}.{alias.name}"):
                    yield f"{node.module}.{alias.name}", node.lineno


def _import_graph(*packages: str) -> dict[str, list[tuple[str, int]]]:
    """Each module of `packages` -> the modules its import statements name, with the line."""
    return {
        _module_name(path): list(_imports(path))
        for package in packages
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _layer(module: str) -> int | None:
    return next((i for i, layer in enumerate(WORKER_LAYERS) if _under(module, layer)), None)


Graph = dict[str, list[tuple[str, int]]]  # module -> the modules it imports, with the line


def _upward_imports(graph: Graph) -> list[str]:
    broken = []
    for module, imports in graph.items():
        here = _layer(module)
        for name, line in imports:
            there = _layer(name)
            if here is not None and there is not None and there > here:
                broken.append(f"{module}:{line} imports {name}, a higher layer")
    return broken


def _cycles(graph: Graph) -> list[str]:
    edges = {
        m: sorted({name for name, _ in imports if name in graph and name != m}) for m, imports in graph.items()
    }
    cycles: list[str] = []
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for other in edges[module]:
            if state.get(other) == "open":
                cycles.append(" -> ".join([*path[path.index(other) :], other]))
            elif other not in state:
                visit(other)
        path.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return cycles


def _forbidden_imports(graph: Graph) -> list[str]:
    broken = []
    for module, imports in graph.items():
        banned = [f for importer, names in FORBIDDEN.items() if _under(module, importer) for f in names]
        banned += [
            guarded for guarded, allowed in ONLY_FROM.items() if not any(_under(module, a) for a in allowed)
        ]
        broken += [
            f"{module}:{line} imports {name}" for name, line in imports if any(_under(name, b) for b in banned)
        ]
    return broken


def _gateway_to_workers(graph: Graph) -> list[str]:
    broken = []
    for module, imports in graph.items():
        if not _under(module, "autoglm_rpc"):
            continue
        for name, line in imports:
            # `from workers.process import entry` names the package and its module: the module is judged.
            package = (ROOT / name.replace(".", "/")).is_dir()
            if _under(name, "workers") and not package and not _under(module, GATEWAY_TO_WORKERS.get(name, "-")):
                broken.append(f"{module}:{line} imports {name}")
    return broken


SOURCE = _import_graph("workers", "autoglm_rpc")


def test_every_workers_module_is_in_a_layer() -> None:
    assert [m for m in SOURCE if _under(m, "workers") and m != "workers" and _layer(m) is None] == []


def test_workers_layers_import_only_downwards() -> None:
    assert _upward_imports(SOURCE) == []


def test_no_import_cycle_among_workers_modules() -> None:
    assert _cycles({m: imports for m, imports in SOURCE.items() if _under(m, "workers")}) == []


def test_no_package_imports_what_its_rules_forbid() -> None:
    assert _forbidden_imports(SOURCE) == []


def test_gateway_reaches_workers_only_through_the_named_modules() -> None:
    """Besides protocol.py, the gateway names only the spawn trampoline (process/entry.py) and the tensor-parallel
    split check (parallel/split.py), both standard library only; the CLI's `demo-model` command builds a
    checkpoint, lazily, in its own process."""
    assert _gateway_to_workers(SOURCE) == []
    named = {name for imports in SOURCE.values() for name, _ in imports}
    assert set(GATEWAY_TO_WORKERS) <= named  # the table names no import that is gone


def test_the_rules_catch_what_they_forbid(tmp_path: Path) -> None:
    """Each check reports a planted breach, and a function's lazy import counts like a module-level one."""
    (tmp_path / "probe.py").write_text("import grpc\n\n\ndef f():\n    from workers.process import worker\n")
    assert list(_imports(tmp_path / "probe.py")) == [
        ("grpc", 1),
        ("workers.process", 5),
        ("workers.process.worker", 5),
    ]
    planted = {
        "workers.kv.blocks": [("workers.engine.scheduler", 3)],
        "workers.engine.scheduler": [("workers.kv.blocks", 4)],
        "autoglm_rpc.core.frontend": [("grpc", 5), ("autoglm_rpc.grpc_api.status", 6)],
        "autoglm_rpc.pool.pool": [("autoglm_rpc.startup.config", 7), ("workers.process.worker", 8)],
        "autoglm_rpc.openai_api.routes": [("autoglm_rpc.grpc_api.errors", 9)],
    }
    assert _upward_imports(planted) == ["workers.kv.blocks:3 imports workers.engine.scheduler, a higher layer"]
    assert _cycles(planted) == ["workers.engine.scheduler -> workers.kv.blocks -> workers.engine.scheduler"]
    assert _forbidden_imports(planted) == [
        "autoglm_rpc.core.frontend:5 imports grpc",
        "autoglm_rpc.core.frontend:6 imports autoglm_rpc.grpc_api.status",
        "autoglm_rpc.pool.pool:7 imports autoglm_rpc.startup.config",
        "autoglm_rpc.openai_api.routes:9 imports autoglm_rpc.grpc_api.errors",
    ]
    assert _gateway_to_workers(planted) == ["autoglm_rpc.pool.pool:8 imports workers.process.worker"]


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


def _roots(loaded: set[str], roots: tuple[str, ...]) -> set[str]:
    return {name for name in loaded if name.split(".")[0] in roots}


def test_gateway_does_not_import_torch_or_transformers() -> None:
    loaded = _modules_after_import(_package_modules("autoglm_rpc"))
    assert "torch" not in loaded
    assert "transformers" not in loaded


def test_workers_do_not_import_grpc_or_the_web_framework() -> None:
    loaded = _modules_after_import(_package_modules("workers"))
    assert not {name for name in loaded if name == "grpc" or name.startswith(("grpc.", "autoglm_rpc"))}
    assert not _roots(loaded, WEB_FRAMEWORK)


CORE = [*_package_modules("autoglm_rpc/core"), "autoglm_rpc.security.rate_limit",
        *_package_modules("autoglm_rpc/pool"), *_package_modules("autoglm_rpc/text"),
        *_package_modules("autoglm_rpc/media")]  # fmt: skip


def test_the_request_core_imports_neither_grpc_nor_the_web_framework() -> None:
    """The request core, the pool, text handling and the error taxonomy serve both protocols: each face (the gRPC
    servicers, the HTTP routes) converts to and from them, and maps the taxonomy to its own statuses."""
    loaded = _modules_after_import(CORE)
    assert not _roots(loaded, ("grpc", "google", "autoglm", *WEB_FRAMEWORK))


def test_only_the_http_edge_imports_the_web_framework() -> None:
    """The request core, the pool, text handling and telemetry (its HTTP middleware is plain ASGI) serve both
    protocols; FastAPI, Starlette and uvicorn stay in `openai_api/`, which the server imports only when the HTTP
    face is on (so a gRPC-only server, as the GPU check runs it, needs no web stack installed)."""
    modules = [m for m in _package_modules("autoglm_rpc") if not m.startswith("autoglm_rpc.openai_api")]
    assert not _roots(_modules_after_import([*modules, "bench.client_process", "bench.harness"]), WEB_FRAMEWORK)


def test_protocol_uses_the_standard_library_only() -> None:
    loaded = _modules_after_import(["workers.protocol", "workers.parallel.split", "workers.process.entry"])
    assert not {name for name in loaded if name.split(".")[0] in {"torch", "grpc", "numpy", "google"}}
