"""Find the checkpoint to serve: a local directory, or a hub id already in the local Hugging Face cache.

Nothing is downloaded unless `allow_download` is set. The gateway resolves the path once and hands the same
directory to every worker, so gateway and workers always read the same files.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def resolve_model_source(model: str, allow_download: bool = False) -> Path:
    """Return the checkpoint directory for `model`, or raise ValueError saying what was looked for."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ValueError(f"model {model!r} is a file; give the checkpoint's directory")
    if model.count("/") != 1 or model.startswith(("/", ".", "~")):
        raise ValueError(f"model {model!r}: no such directory")
    from huggingface_hub import snapshot_download  # only needed for hub ids

    try:
        snapshot = snapshot_download(model, local_files_only=not allow_download)
    except Exception as exc:
        hint = "" if allow_download else " (downloads are off: set allow_download, or pass a local directory)"
        raise ValueError(
            f"model {model!r} is not a directory and not in the local Hugging Face cache{hint}: {exc}"
        ) from None
    logger.info("model %s resolved to %s", model, snapshot)
    return Path(snapshot)


def default_model_id(model: str, source: Path) -> str:
    """The served name when none is configured: a hub id as given, else the directory's name."""
    return model if not Path(model).expanduser().exists() else source.name


def served_model_names(
    served_model_name: tuple[str, ...], model_id: str | None, model: str, source: Path
) -> tuple[str, ...]:
    """The names the model answers to, the first being its id: served_model_name, else model_id (its synonym for
    a single name), else the default id (`default_model_id`)."""
    if served_model_name:
        return served_model_name
    return (model_id or default_model_id(model, source),)
