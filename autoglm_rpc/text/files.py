"""Reading a checkpoint's small JSON files with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoglm_rpc.text.errors import CheckpointFileError


def read_json_object(path: Path, *, required: bool) -> dict[str, Any]:
    """Return the JSON object in `path`; `{}` when it is absent and not `required`.

    Raises CheckpointFileError when a required file is missing, the file is not valid UTF-8 JSON, or its top level
    is not an object.
    """
    if not path.is_file():
        if required:
            raise CheckpointFileError(f"{path} is missing")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointFileError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointFileError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data
