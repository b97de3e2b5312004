"""Checkpoint integrity: every file of the checkpoint must match a `sha256sum`-format manifest before loading.

Manifest lines are `<64 hex digits>  <path>` (or `<hex> *<path>`, sha256sum's binary mode), paths relative to
the checkpoint directory; make one with

    cd CHECKPOINT && find . -type f ! -path '*/.*' | sort | xargs sha256sum > /elsewhere/manifest.sha256

Every regular file in the directory (hidden ones and the manifest itself excepted) must be listed and match: a
file added to the checkpoint (an extra weight shard, a Python module) refuses to load as surely as a changed one.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath

_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_CHUNK = 1 << 20


def read_manifest(manifest: Path) -> dict[str, str]:
    """{relative path: lowercase hex digest}; ValueError naming the file and line for anything else."""
    try:
        text = manifest.read_text()
    except OSError as exc:
        raise ValueError(f"weights_manifest: cannot read {manifest}: {exc.strerror}") from None
    digests: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE.fullmatch(line.rstrip("\r"))
        path = PurePosixPath(match.group(2)) if match else None
        if match is None or path is None or path.is_absolute() or ".." in path.parts:
            raise ValueError(
                f"weights_manifest: {manifest} line {number}: expected `<sha256 hex>  <relative path>`"
            )
        digests[path.as_posix()] = match.group(1).lower()
    if not digests:
        raise ValueError(f"weights_manifest: {manifest} lists no files")
    return digests


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_files(directory: Path, exclude: Path | None = None) -> set[str]:
    """Relative paths of the regular files a load may read (hidden files and `exclude` left out)."""
    excluded = exclude.resolve() if exclude is not None else None
    return {
        path.relative_to(directory).as_posix()
        for path in directory.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(directory).parts)
        and path.resolve() != excluded
    }


def verify_checkpoint(directory: Path, manifest: Path) -> None:
    """Raise ValueError naming the first file that is unlisted, missing or does not match its digest."""
    expected = read_manifest(manifest)
    present = checkpoint_files(directory, exclude=manifest)
    unlisted, missing = sorted(present - set(expected)), sorted(set(expected) - present)
    if unlisted:
        raise ValueError(
            f"weights_manifest: {unlisted[0]} is in {directory} but not in {manifest}; refusing to load"
        )
    if missing:
        raise ValueError(f"weights_manifest: {missing[0]} is listed in {manifest} but missing from {directory}")
    for name in sorted(expected):
        actual = sha256_file(directory / name)
        if actual != expected[name]:
            raise ValueError(
                f"weights_manifest: {name} does not match its SHA-256 in {manifest} (expected "
                f"{expected[name][:12]}…, found {actual[:12]}…): it was changed or corrupted; refusing to load"
            )
