"""`autoglm-rpc serve` as a real child process, as an operator runs it: its log lines, its port, its signals."""

from __future__ import annotations

import contextlib
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
    """Starts `serve` on port 0 with `flags` and extra `environ`; stderr is collected line by line.

    `own_group`: in a session (and process group) of its own, whose id is `pid`, as systemd or a container
    runtime starts it, so that a test can signal the whole group."""

    def __init__(
        self, flags: Sequence[str], environ: dict[str, str] | None = None, *, own_group: bool = False
    ) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.process = subprocess.Popen(
            [*CLI, "serve", "--port", "0", "--http-port", "0", *flags],
            cwd=ROOT,
            env=os.environ | (environ or {}),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            start_new_session=own_group,
        )
        self.own_group = own_group
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
        """Make sure the process and its workers are gone (SIGKILL if it is still running; with `own_group`,
        to every process of the group)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        if self.own_group and live_group_members(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)


def live_group_members(pgid: int) -> list[int]:
    """The processes of process group `pgid` still running (zombies waiting to be reaped are not)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # Fields after the command (which is in parentheses and may hold spaces): state, ppid, pgrp, ...
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(group) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def wait_until_group_is_gone(pgid: int, timeout: float) -> list[int]:
    """Wait for every process of group `pgid` to end; return those still running past `timeout`."""
    deadline = time.monotonic() + timeout
    while (members := live_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return members
