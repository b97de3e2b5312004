"""Checkpoint integrity: the manifest must match every file; pickle weights only when allowed; a tampered
checkpoint stops the server from starting, with an error naming the file."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from pathlib import Path

import pytest

from tests.support import ServerThread, server_settings
from workers.model.loader import check_checkpoint_files
from workers.model.manifest import verify_checkpoint
from workers.protocol import WorkerConfig


def _write_manifest(directory: Path, manifest: Path) -> Path:
    """What `find . -type f | sort | xargs sha256sum` prints, run in `directory`."""
    lines = [
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  ./{path.relative_to(directory).as_posix()}\n"
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    ]
    manifest.write_text("".join(lines))
    return manifest


def _flip_a_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def files(tmp_path: Path) -> Path:
    directory = tmp_path / "checkpoint"
    (directory / "sub").mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (directory / "sub" / "extra.txt").write_text("hello")
    return directory


def test_a_matching_manifest_passes(files: Path, tmp_path: Path) -> None:
    verify_checkpoint(files, _write_manifest(files, tmp_path / "manifest.sha256"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: _flip_a_byte(d / "model.safetensors"), "model.safetensors does not match its SHA-256"),
        (lambda d: (d / "evil.py").write_text("import os"), "evil.py is in .* but not in"),
        (lambda d: (d / "sub" / "extra.txt").unlink(), "sub/extra.txt is listed in .* but missing"),
    ],
)
def test_a_changed_checkpoint_is_refused_naming_the_file(files: Path, tmp_path: Path, change, message) -> None:
    manifest = _write_manifest(files, tmp_path / "manifest.sha256")
    change(files)
    with pytest.raises(ValueError, match=message):
        verify_checkpoint(files, manifest)


def test_a_manifest_inside_the_checkpoint_and_hidden_files_are_not_listed(files: Path) -> None:
    manifest = _write_manifest(files, files / ".." / "m.sha256")
    inside = files / "manifest.sha256"
    shutil.copy(manifest, inside)
    (files / ".cache").mkdir()
    (files / ".cache" / "lock").write_text("")
    verify_checkpoint(files, inside)


@pytest.mark.parametrize("text", ["", "abc  config.json\n", f"{'0' * 64}  /etc/passwd\n", f"{'0' * 64}  ../x\n"])
def test_bad_manifests_are_refused(files: Path, tmp_path: Path, text: str) -> None:
    (tmp_path / "bad.sha256").write_text(text)
    with pytest.raises(ValueError, match="weights_manifest"):
        verify_checkpoint(files, tmp_path / "bad.sha256")


def test_pickle_weights_need_allow_pickle_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    config = WorkerConfig(worker_id=0, model_path=str(tmp_path), model_id="m")
    with pytest.raises(ValueError, match=r"only pickle weights .* allow_pickle_weights"):
        check_checkpoint_files(config, lambda stage, fraction: None)
    allowed = WorkerConfig(worker_id=0, model_path=str(tmp_path), model_id="m", allow_pickle_weights=True)
    check_checkpoint_files(allowed, lambda stage, fraction: None)


def test_a_tampered_checkpoint_does_not_serve(glm_checkpoint: Path, tmp_path: Path, caplog) -> None:
    checkpoint = Path(shutil.copytree(glm_checkpoint, tmp_path / "glm"))
    manifest = _write_manifest(checkpoint, tmp_path / "glm.sha256")
    _flip_a_byte(checkpoint / "model.safetensors")
    server = ServerThread(server_settings(checkpoint, workers=1, weights_manifest=str(manifest)))
    try:
        with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="failed to start"):
            server.start()
    finally:
        with contextlib.suppress(RuntimeError):  # the loop is closed when the failed start already finished
            server.stop()  # else: waits until the failed start has stopped the worker
    assert "model.safetensors does not match its SHA-256" in caplog.text
