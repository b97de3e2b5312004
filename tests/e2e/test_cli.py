"""The command line as an operator uses it: `autoglm-rpc serve` in one process, `generate` in another."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "autoglm_rpc.startup.cli"]


def _lines(stream, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def _wait_for(lines: queue.Queue[str], pattern: str, seen: list[str], timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


def test_serve_then_generate_streams_text_and_sigterm_exits_cleanly(glm_checkpoint: Path) -> None:
    # The model comes through the seed document's alias, the batch size through AUTOGLM_*.
    # The HTTP API on a free port through AUTOGLM_*, as the config file or --http-port would set it.
    environ = os.environ | {
        "MODEL_PATH": str(glm_checkpoint),
        "AUTOGLM_MAX_BATCH_SIZE": "4",
        "AUTOGLM_HTTP_PORT": "0",
    }
    serve = subprocess.Popen(
        [*CLI, "serve", "--port", "0", "--device", "cpu", "--workers", "1", "--worker-threads", "1"],
        cwd=ROOT,
        env=environ,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    threading.Thread(target=_lines, args=(serve.stderr, lines), daemon=True).start()
    try:
        port = _wait_for(lines, r"listening on 127\.0\.0\.1:(\d+)", seen, 60).group(1)
        http_port = _wait_for(lines, r"HTTP API on http://127\.0\.0\.1:(\d+)/v1", seen, 60).group(1)
        _wait_for(lines, r"loading weights", seen, 60)  # load progress is shown
        generate = subprocess.run(
            [*CLI, "generate", "Hello", "--target", f"127.0.0.1:{port}", "--max-new-tokens", "12"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert generate.returncode == 0, generate.stderr
        assert generate.stdout.strip(), "no text was streamed"
        assert re.search(r"\[\w+: \d+ tokens", generate.stderr)
        models = httpx.get(f"http://127.0.0.1:{http_port}/v1/models", timeout=30).json()
        assert [card["id"] for card in models["data"]] == [glm_checkpoint.name]
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
        _wait_for(lines, r"shutting down", seen, 5)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(10)


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--device", "tpu"], 2, "invalid choice: 'tpu'"),
        (["--max-batch-size", "0"], 2, "max_batch_size must be at least 1"),
        ([], 1, "no such directory"),
    ],
)
def test_bad_settings_exit_with_a_message(extra: list[str], code: int, message: str) -> None:
    result = subprocess.run(
        [*CLI, "serve", "--model", "/nonexistent/model", "--port", "0", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == code
    assert message in result.stderr
