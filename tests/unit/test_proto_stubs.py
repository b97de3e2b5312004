"""The committed stubs in autoglm/v1 are exactly what `make proto` generates from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
        p.relative_to(ROOT): p.read_bytes()
        for p in (ROOT / "autoglm").rglob("*")
        if p.is_file() and p.name != "__init__.py" and "__pycache__" not in p.parts
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
