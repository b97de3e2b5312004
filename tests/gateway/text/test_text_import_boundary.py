"""The gateway's text side never imports torch or transformers (start-up time, memory, no CUDA in the gateway)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]

_PROBE = """
import json, sys
import autoglm_rpc.text as text
tokenizer = text.TextTokenizer.from_dir(sys.argv[1])
facts = text.read_checkpoint_facts(sys.argv[1])
stream = text.TextStream(tokenizer, ["x"])
stream.push(tokenizer.encode_chat([text.ChatMessage("user", "hi")]))
stream.flush()
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "transformers"))))
"""


def test_text_package_does_not_import_torch_or_transformers(glm_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(glm_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
