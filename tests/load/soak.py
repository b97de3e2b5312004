"""Soak: 64 streams for minutes against CPU workers while one worker is killed and restarted.

    python -m tests.load.soak --duration 180 --streams 64        # `make soak`

Loopback only, bounded in count and time. It builds a tiny checkpoint, starts `autoglm-rpc serve` (2 CPU workers,
a capacity below the number of streams, so overload is part of the load), and runs the load generator
(`soak_client.py`) as a separate process. Meanwhile it samples the gateway's resident memory (VmRSS) twice a
second, and part way through SIGKILLs worker 0 and waits for it to come back. At the end it stops the server
with SIGTERM and checks:
- every call ended OK or with a documented status (QUEUE_FULL, WORKER_CRASHED, NO_READY_WORKER, or cancelled by
  the client itself), no call hung past its deadline, and every OK stream's tokens match its usage;
- the killed worker was restarted, and the server exited 0;
- the gateway's memory at the end is within `--max-growth` (10 %) of its memory after the warm-up.
It prints a report (and writes it as JSON with `--json`); the exit code is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoglm.v1 import model_pb2
from autoglm_rpc.client import Client
from tests.load.soak_client import EXPECTED
from tests.serve_process import ROOT, ServeProcess
from workers.model.checkpoints import TinyModelSpec, build_checkpoint


@dataclass
class SoakOptions:
    duration: float = 180.0
    streams: int = 64
    workers: int = 2
    max_batch_size: int = 16
    max_queue_depth: int = 24
    warmup: float = 20.0  # seconds of load before the memory baseline is taken
    kill_at: float = 0.4  # fraction of the duration at which worker 0 is killed
    deadline: float = 60.0  # per call
    max_growth: float = 0.10


@dataclass
class SoakReport:
    options: SoakOptions
    outcomes: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    short_streams: int = 0
    max_call_seconds: float = 0.0
    rss_after_warmup_mib: float = 0.0
    rss_end_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_every_10s_mib: list[float] = field(default_factory=list)
    restart_seconds: float | None = None  # from the kill to the worker being ready again
    exit_code: int | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def num_requests(self) -> int:
        return sum(self.outcomes.values())

    def check(self) -> None:
        """Fill `failures` with every promise the run broke."""
        unexpected = {k: v for k, v in self.outcomes.items() if k not in EXPECTED}
        if unexpected:
            self.failures.append(f"calls ended with undocumented statuses or hung: {unexpected}")
        if not self.outcomes.get("OK"):
            self.failures.append("no call succeeded")
        if self.short_streams:
            self.failures.append(f"{self.short_streams} OK stream(s) lost tokens")
        if self.restart_seconds is None:
            self.failures.append("the killed worker did not come back")
        if self.exit_code != 0:
            self.failures.append(f"the server exited with {self.exit_code}")
        growth = self.rss_end_mib / self.rss_after_warmup_mib - 1 if self.rss_after_warmup_mib else 0.0
        if growth > self.options.max_growth:
            self.failures.append(f"gateway memory grew {growth:.1%} after the warm-up")

    def text(self) -> str:
        growth = self.rss_end_mib / self.rss_after_warmup_mib - 1 if self.rss_after_warmup_mib else 0.0
        by_status = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items(), key=lambda kv: -kv[1]))
        restart = f"{self.restart_seconds:.1f}s" if self.restart_seconds is not None else "never"
        lines = [
            f"soak: {self.options.streams} streams for {self.options.duration:.0f}s, "
            f"{self.options.workers} CPU workers",
            f"  requests {self.num_requests}: {by_status}",
            f"  tokens {self.tokens}; slowest call {self.max_call_seconds:.1f}s; worker 0 back after {restart}",
            f"  gateway RSS: {self.rss_after_warmup_mib:.1f} MiB after warm-up, {self.rss_end_mib:.1f} MiB at the "
            f"end ({growth:+.1%}), peak {self.rss_peak_mib:.1f} MiB",
            f"  gateway RSS every 10 s (MiB): {' '.join(f'{v:.1f}' for v in self.rss_every_10s_mib)}",
            f"  server exit code {self.exit_code}",
            "  PASS" if not self.failures else "  FAIL: " + "; ".join(self.failures),
        ]
        return "\n".join(lines)


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class _MemorySampler(threading.Thread):
    """Samples a process's RSS twice a second: the peak, and one sample every 10 s for the report."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.every_10s: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        count = 0
        while not self.stop.wait(0.5):
            try:
                rss = rss_mib(self.pid)
            except (OSError, RuntimeError):
                return
            self.peak = max(self.peak, rss)
            if count % 20 == 0:
                self.every_10s.append(round(rss, 1))
            count += 1


def _kill_and_wait_for_restart(client: Client, timeout: float) -> float | None:
    """SIGKILL worker 0; seconds until it is READY again with one more restart, None if it never is."""
    before = client.server_info(timeout=10).workers[0]
    killed_at = time.monotonic()
    os.kill(before.pid, signal.SIGKILL)
    while time.monotonic() - killed_at < timeout:
        worker = client.server_info(timeout=10).workers[0]
        if worker.state == model_pb2.WORKER_STATE_READY and worker.restarts == before.restarts + 1:
            return time.monotonic() - killed_at
        time.sleep(0.2)
    return None


def run_soak(options: SoakOptions, workdir: Path) -> SoakReport:
    """Run the whole soak (server, load, kill, shutdown) and return its checked report."""
    checkpoint = build_checkpoint(workdir / "model", TinyModelSpec(architecture="glm", seed=7))
    flags = ["--model", str(checkpoint), "--device", "cpu", "--workers", str(options.workers)]
    flags += ["--worker-threads", "1", "--max-batch-size", str(options.max_batch_size)]
    flags += ["--max-queue-depth", str(options.max_queue_depth)]
    report = SoakReport(options)
    serve = ServeProcess(flags, {"AUTOGLM_GRACE_PERIOD": "30"})
    try:
        with Client(serve.target) as client:
            client.wait_until_ready(180)
            load_args = ["--target", serve.target, "--streams", str(options.streams)]
            load_args += ["--duration", str(options.duration), "--deadline", str(options.deadline)]
            load = subprocess.Popen(
                [sys.executable, "-m", "tests.load.soak_client", *load_args],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            sampler = _MemorySampler(serve.pid)
            sampler.start()
            started = time.monotonic()
            time.sleep(options.warmup)
            report.rss_after_warmup_mib = rss_mib(serve.pid)
            time.sleep(max(0.0, started + options.kill_at * options.duration - time.monotonic()))
            report.restart_seconds = _kill_and_wait_for_restart(client, timeout=120)
            output, _ = load.communicate(timeout=options.duration + 2 * options.deadline + 60)
            report.rss_end_mib = rss_mib(serve.pid)
            sampler.stop.set()
            report.rss_peak_mib = max(sampler.peak, report.rss_end_mib, report.rss_after_warmup_mib)
            report.rss_every_10s_mib = sampler.every_10s
        tally = json.loads(output)
        report.outcomes = dict(tally["outcomes"])
        report.tokens = tally["tokens"]
        report.short_streams = tally["short_streams"]
        report.max_call_seconds = tally["max_call_seconds"]
        serve.terminate()
        report.exit_code = serve.process.wait(60)
    finally:
        serve.close()
    report.check()
    return report


def main() -> int:
    defaults = SoakOptions()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds of load")
    parser.add_argument("--streams", type=int, default=defaults.streams, help="concurrent callers")
    parser.add_argument("--warmup", type=float, default=defaults.warmup, help="seconds before the memory baseline")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    options = SoakOptions(duration=args.duration, streams=args.streams, warmup=args.warmup)
    with tempfile.TemporaryDirectory(prefix="autoglm-soak-") as workdir:
        report = run_soak(options, Path(workdir))
    sys.stdout.write(report.text() + "\n")
    if args.json:
        args.json.write_text(json.dumps(asdict(report) | {"num_requests": report.num_requests}, indent=2))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
