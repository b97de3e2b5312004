"""The HTTP examples cannot rot: each curl command and openai SDK example of docs/openai-api.md, and the README's
first HTTP request and SDK example, run against a live server (the session's tiny GLM served as `tiny-glm`, in
place of the demo's `autoglm-demo` on port 8000)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from tests.doc_blocks import block, shell_commands
from tests.support import ServerThread

SHEET = shell_commands(block("docs/openai-api.md", "openai-http", "sh"), "curl")
COMMANDS = [*SHEET, *shell_commands(block("README.md", "quickstart-http", "sh"), "curl")]
SDK_EXAMPLES = {
    "docs/openai-api.md": block("docs/openai-api.md", "openai-sdk", "python"),
    "README.md": block("README.md", "quickstart-sdk", "python"),
}


def _live(text: str, server: ServerThread) -> str:
    return text.replace("http://localhost:8000", f"http://127.0.0.1:{server.app.http.port}").replace(
        "autoglm-demo", "tiny-glm"
    )


def test_the_sheet_has_each_route() -> None:
    assert len(SHEET) == 6 and len(COMMANDS) == 7
    for route in ("/v1/models", "/v1/chat/completions", "/v1/completions", "/health"):
        assert any(route in command for command in SHEET), route


@pytest.mark.parametrize("index", range(len(COMMANDS)))
def test_each_curl_command_succeeds(glm_server: ServerThread, index: int) -> None:
    command = _live(COMMANDS[index], glm_server)
    result = subprocess.run(
        [*shlex.split(command), "--max-time", "60", "--fail-with-body"],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    if '"stream": true' in command:
        events = result.stdout.split("\n\n")
        assert events[-2] == "data: [DONE]" and events[-1] == ""
        assert json.loads(events[-3].removeprefix("data: "))["usage"]["completion_tokens"] > 0
    else:
        body = json.loads(result.stdout)
        assert "error" not in body


@pytest.mark.parametrize("page", sorted(SDK_EXAMPLES))
def test_the_sdk_example_runs(glm_server: ServerThread, page: str) -> None:
    code = _live(SDK_EXAMPLES[page], glm_server)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
