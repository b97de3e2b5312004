"""Faults for real, in real processes: a worker killed by SIGSEGV (restarted, its death described, the other worker
serving meanwhile), and a checkpoint no worker can load (the server gives up and exits 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from autoglm.v1 import model_pb2
from tests.support import ServerThread, server_settings
from tests.support import wait_for_info as _wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_a_worker_that_segfaults_is_restarted_while_the_other_serves(glm_checkpoint: Path) -> None:
    """A real SIGSEGV from outside (what a crash in native code looks like to the gateway). Retry-once and the
    crash loop are unit-tested with the in-process worker (tests/unit/test_pool_inproc.py)."""
    settings = server_settings(glm_checkpoint, workers=2, restart_backoff_initial=0.5)
    server = ServerThread(settings).start()
    try:
        with server.client() as client:
            client.wait_until_ready(60)
            _wait_for(client, lambda i: all(w.state == model_pb2.WORKER_STATE_READY for w in i.workers), 60)
            os.kill(server.app.pool.workers[0].pid, signal.SIGSEGV)
            info = _wait_for(client, lambda i: i.workers[0].restarts == 1, 60)
            assert info.workers[0].last_exit == "killed by signal SIGSEGV"
            assert info.workers[1].state == model_pb2.WORKER_STATE_READY
            assert client.generate("Hello", max_new_tokens=5, timeout=60).usage.completion_tokens == 5
            _wait_for(client, lambda i: i.workers[0].state == model_pb2.WORKER_STATE_READY, 60)
    finally:
        server.stop()


def test_a_checkpoint_no_worker_can_load_ends_the_server(glm_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in glm_checkpoint.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    flags = ["--model", str(broken), "--port", "0", "--device", "cpu", "--workers", "1", "--worker-threads", "1"]
    flags += ["--no-http"]
    result = subprocess.run(
        [sys.executable, "-m", "autoglm_rpc.startup.cli", "serve", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    # A corrupt weights file fails the same way every time: no restart is tried (tests/hardening has more).
    assert "cannot load the model" in result.stderr and "restarting in" not in result.stderr
