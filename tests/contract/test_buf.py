"""The contract as a product: `buf lint` (STANDARD + COMMENTS) and `buf breaking` (FILE) against the last
released proto, proto/released/v<version>.binpb. buf comes from npm (tools/package.json), which `make test`
installs with `npm ci`; without it these tests skip and say so."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
RELEASES = ROOT / "proto" / "released"

pytestmark = pytest.mark.skipif(
    not BUF.exists(),
    reason="buf is not installed: run `make tools` (needs npm; `make test` runs it when npm exists)",
)


def _latest_release() -> Path:
    releases = sorted(RELEASES.glob("v*.binpb"), key=lambda p: tuple(int(n) for n in p.stem[1:].split(".")))
    assert releases, "no released contract under proto/released"
    return releases[-1]


def _buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_lint_is_clean() -> None:
    result = _buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_since_the_last_release() -> None:
    result = _buf("breaking", "--against", str(_latest_release()))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_breaking_check_catches_a_renumbered_field(tmp_path: Path) -> None:
    """The check is live: the same proto with one field number changed fails it."""
    shutil.copytree(ROOT / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns("released"))
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    proto = tmp_path / "proto" / "autoglm" / "v1" / "generation.proto"
    text = proto.read_text()
    assert "string request_id = 1;" in text
    proto.write_text(text.replace("string request_id = 1;", "string request_id = 99;", 1))
    result = _buf("breaking", "--against", str(_latest_release()), cwd=tmp_path)
    assert result.returncode != 0
    assert "request_id" in result.stdout + result.stderr
