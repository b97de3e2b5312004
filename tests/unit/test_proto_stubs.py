"""The committed stubs (autoglm-proto/autoglm/v1) are exactly what `make proto` generates from proto/, and they
build into a wheel of their own that imports with nothing but protobuf and grpcio."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "autoglm-proto"
_STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto").rglob("*.proto"))
    outputs = [f"--{kind}_out={tmp_path}" for kind in ("python", "grpc_python", "pyi")]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iproto", *outputs, *protos],
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    generated = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {
        p.relative_to(STUBS): p.read_bytes()
        for p in (STUBS / "autoglm").rglob("*")
        if p.is_file() and p.name not in ("__init__.py", "py.typed") and "__pycache__" not in p.parts
    }
    assert generated.keys() == committed.keys(), "run `make proto`: the set of generated files changed"
    stale = sorted(str(name) for name, data in generated.items() if committed[name] != data)
    assert not stale, f"run `make proto`: these stubs are stale: {stale}"


def test_request_messages_stay_in_step() -> None:
    """GenerateRequest and GenerateStreamRequest carry the same fields (the stream adds stream_options)."""
    from autoglm.v1 import generation_pb2

    unary = {(f.name, f.number, f.type) for f in generation_pb2.GenerateRequest.DESCRIPTOR.fields}
    stream = {(f.name, f.number, f.type) for f in generation_pb2.GenerateStreamRequest.DESCRIPTOR.fields}
    assert stream - unary == {("stream_options", 10, 11)}
    assert unary <= stream


def test_the_stubs_wheel_holds_the_package_and_imports_on_its_own(tmp_path: Path) -> None:
    """What another service pins: `autoglm-proto`, whose wheel alone provides `autoglm.v1` (messages, services
    and type hints). The import runs from the wheel file in an isolated interpreter (-I, cwd elsewhere), so a
    module missing from the wheel cannot be found in this checkout instead."""
    # Built from a clean copy: setuptools' build/ folder would otherwise carry stale modules between runs.
    source = shutil.copytree(
        STUBS, tmp_path / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=source,
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("autoglm_proto-*.whl")
    version = tomllib.loads((STUBS / "pyproject.toml").read_text())["project"]["version"]
    assert wheel.name == f"autoglm_proto-{version}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"autoglm/v1/{m}{suffix}" for m in ("generation", "model", "types") for suffix in _STUB_SUFFIXES}
    assert modules | {"autoglm/__init__.py", "autoglm/v1/__init__.py", "autoglm/v1/py.typed"} <= names
    assert not {n for n in names if n.startswith(("autoglm_rpc/", "workers/", "tests/"))}
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from autoglm.v1 import generation_pb2, generation_pb2_grpc, model_pb2_grpc;"
        "assert generation_pb2.__file__.startswith(sys.argv[1]), generation_pb2.__file__;"
        "print(generation_pb2_grpc.GenerationServiceStub.__name__, model_pb2_grpc.ModelServiceStub.__name__,"
        " generation_pb2.GenerateRequest(prompt='hi').prompt)"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, str(wheel)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "GenerationServiceStub ModelServiceStub hi\n"), result.stderr


def test_the_stubs_version_is_a_released_contract() -> None:
    """autoglm-proto's version names a release snapshot that `buf breaking` checks against (in step)."""
    version = tomllib.loads((STUBS / "pyproject.toml").read_text())["project"]["version"]
    assert (ROOT / "proto" / "released" / f"v{version}.binpb").is_file()
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"autoglm-proto=={version}" in pinned
