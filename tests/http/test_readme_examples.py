"""The README's HTTP examples cannot rot: each curl command and the openai SDK example run against a live server
(the session's tiny GLM served as `tiny-glm`, in place of the demo's `autoglm-demo` on port 8000)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ServerThread

ROOT = Path(__file__).resolve().parents[2]


def _block(name: str, language: str) -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {name}:start -->\n```{language}\n(.*?)```\n<!-- {name}:end -->", readme, re.S)
    assert match, f"the README lost its {name} markers"
    return match.group(1)


def curl_commands() -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", _block("openai-http", "sh"))
    commands: list[str] = []
    for line in joined.splitlines():
        if commands and commands[-1].count("'") % 2:  # a -d '...' body that spans lines
            commands[-1] += "\n" + line
        elif line.startswith("curl "):
            commands.append(line)
    return commands


def _live(text: str, server: ServerThread) -> str:
    return text.replace("http://localhost:8000", f"http://127.0.0.1:{server.app.http.port}").replace(
        "autoglm-demo", "tiny-glm"
    )


def test_the_sheet_has_each_route() -> None:
    commands = curl_commands()
    assert len(commands) == 6
    for route in ("/v1/models", "/v1/chat/completions", "/v1/completions", "/health"):
        assert any(route in command for command in commands), route


@pytest.mark.parametrize("index", range(6))
def test_each_curl_command_succeeds(glm_server: ServerThread, index: int) -> None:
    command = _live(curl_commands()[index], glm_server)
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


def test_the_sdk_example_runs(glm_server: ServerThread) -> None:
    code = _live(_block("openai-sdk", "python"), glm_server)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
