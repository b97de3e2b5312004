"""The Node.js and Go examples (clients/) stream GenerateStream from a live server and print exactly the text the
Python client gets for the same greedy request. Each is skipped, with the reason, where its toolchain is absent:
`make test` installs the Node.js packages when npm exists; Go needs Debian packages (see clients/go/README.md)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ServerThread

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "clients" / "node"
GO_CLIENT = ROOT / "clients" / "go"
GO_SOURCES = Path("/usr/share/gocode/src")
GO_PACKAGES = (
    "golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev "
    "golang-github-golang-protobuf-1-5-dev"
)
PROMPT = "Hello, world"
MAX_NEW_TOKENS = 12


def _python_greedy_text(server: ServerThread) -> str:
    with server.client() as client:
        chunks = client.stream(PROMPT, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
        text = "".join(chunk.text for chunk in chunks)
    assert text, "the Python client got no text"
    return text


def _run(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def test_node_client_streams_the_same_greedy_text(glm_server: ServerThread) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("clients/node has no node_modules: run `make node-deps` (needs npm; `make test` runs it)")
    expected = _python_greedy_text(glm_server)
    arguments = ["--target", glm_server.target, "--prompt", PROMPT, "--max-new-tokens", str(MAX_NEW_TOKENS)]
    result = _run([node, "generate-stream.js", *arguments], NODE_CLIENT, 120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
    assert "FINISH_REASON_" in result.stderr


def test_go_client_streams_the_same_greedy_text(glm_server: ServerThread) -> None:
    missing = [tool for tool in ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc") if not shutil.which(tool)]
    if not (GO_SOURCES / "google.golang.org" / "grpc").is_dir():
        missing.append("the Go gRPC sources")
    if (GO_SOURCES / "github.com/golang/protobuf/proto/table_marshal.go").exists():
        missing.append("github.com/golang/protobuf 1.5 (1.3 cannot marshal protoc-gen-go 1.28 messages)")
    if missing:
        pytest.skip(f"Go toolchain incomplete: no {', '.join(missing)}; apt-get install {GO_PACKAGES}")
    build = _run(["make", "-s", "go-client"], ROOT, 300)
    assert build.returncode == 0, build.stdout + build.stderr
    expected = _python_greedy_text(glm_server)
    arguments = ["--target", glm_server.target, "--prompt", PROMPT, "--max-new-tokens", str(MAX_NEW_TOKENS)]
    result = _run([str(GO_CLIENT / "bin" / "generate-stream"), *arguments], GO_CLIENT, 120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
    assert "FINISH_REASON_" in result.stderr
