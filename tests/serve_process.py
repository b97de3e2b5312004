"""`autoglm-rpc serve` as a real child process, as an operator runs it: its log lines, its port, its signals."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "autoglm_rpc.startup.cli"]


class ServeProcess:
    """Starts `serve` on port 0 with `flags` and extra `environ`; stderr is collected line by line."""

    def __init__(self, flags: Sequence[str], environ: dict[str, str] | None = None) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.process = subprocess.Popen(
            [*CLI, "serve", "--port", "0", "--http-port", "0", *flags],
            cwd=ROOT,
            env=os.environ | (environ or {}),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.port = int(self.wait_for(r"listening on 127\.0\.0\.1:(\d+)", 120).group(1))
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first new log line matching `pattern`; AssertionError with the log so far past `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no log line matching {pattern!r} within {timeout}s in:\n{''.join(self.seen)}")

    def log(self) -> str:
        """Every log line read so far (including those not yet consumed by `wait_for`)."""
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return "".join(self.seen)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Make sure the process and its workers are gone (SIGKILL if it is still running)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)
