"""The whole service under load: a server subprocess (`bench.service_process`) and, per level, client
subprocesses (`bench.client_process`) that stream over gRPC or over the OpenAI-compatible HTTP API, so no client
work shares a process with the gateway. Each level also reads the CPU time (user + system, from /proc, all
threads) of the gateway process, of its worker processes and of the client processes before and after, and
reports each per output token.

Every process binds or dials 127.0.0.1 (the server on port 0); `ServiceProcess` stops the server (closing its
stdin, then terminate and kill if it lingers) however the run ends. A level's streams are split over
`client_processes` processes that start together; its wall time runs from the first process's start to the last
one's end on the machine-wide monotonic clock.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from bench.hf_serve import HF_SERVE_NOTE
from bench.stats import LevelResult, RequestTiming, summarize
from bench.workload import Workload

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


def _python_module(module: str, *args: str, stderr: IO[Any] | int | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def _read_line(process: subprocess.Popen[str], timeout: float, what: str) -> str:
    """The process's next stdout line, or RuntimeError if it exits or `timeout` passes first."""
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    assert process.stdout is not None
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise RuntimeError(f"{what}: nothing after {timeout:.0f}s") from None
    if not line:
        raise RuntimeError(f"{what}: the process exited (code {process.wait()}) without answering")
    return line


def _client_answer(process: subprocess.Popen[str], timeout: float) -> str:
    """A client process's next line (`ready`, or its result); RuntimeError with its reason when it failed."""
    line = _read_line(process, timeout, "a client process")
    if line.startswith('{"error"'):
        raise RuntimeError(f"a client process: {json.loads(line)['error']}")
    return line


def _stop(process: subprocess.Popen[str], timeout: float) -> None:
    if process.stdin is not None and not process.stdin.closed:
        process.stdin.close()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def descendant_pids(pid: int) -> list[int]:
    """Every living descendant of process `pid` (children, their children...); [] without /proc."""
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    kids = [int(child) for child in children.read().split()]
            except OSError:
                continue
            found += kids
            pending += kids
    return found


def total_cpu_seconds(pids: Iterable[int]) -> float:
    """The summed CPU seconds of `pids`; a process already gone counts 0 (read its figure before it exits)."""
    return sum(process_cpu_seconds(pid) or 0.0 for pid in pids)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (its threads, not its children); None without /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime and stime are fields 14 and 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServiceProcess:
    """The server in a subprocess, as a context manager; `target` (gRPC host:port), `http_url` and `pid` are
    known once it has started."""

    def __init__(
        self, settings: dict[str, Any], log_path: Path, start_timeout: float = 900.0, http: bool = True
    ) -> None:
        """`http` False serves gRPC only: the web stack is not even imported (the GPU check runs so)."""
        self.settings = {**settings, "host": "127.0.0.1", "port": 0, "http_port": 0, "http": http}
        self.log_path = log_path
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self.target = ""  # host:port of gRPC, once started
        self.http_url: str | None = None
        self.pid: int | None = None

    def command(self) -> tuple[str, list[str]]:
        """The module to run and its arguments."""
        return "bench.service_process", [json.dumps(self.settings)]

    def __enter__(self) -> ServiceProcess:
        self._log = self.log_path.open("a")
        module, args = self.command()
        self._process = _python_module(module, *args, stderr=self._log)
        try:
            line = json.loads(_read_line(self._process, self.start_timeout, f"the server (log: {self.log_path})"))
            self.pid = line.get("pid")
            if line.get("http_port"):
                self.http_url = f"http://127.0.0.1:{line['http_port']}"
            self.target = f"127.0.0.1:{line['port']}"
            return self
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            _stop(self._process, timeout=60)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


class FloorProcess(ServiceProcess):
    """`bench.grpc_floor` (a bare grpc.aio server stepping every `step_seconds`) run as `ServiceProcess` runs the
    service; its `target` and `pid` take the same client processes and CPU readings."""

    def __init__(self, step_seconds: float, log_path: Path, start_timeout: float = 60.0) -> None:
        super().__init__({}, log_path, start_timeout=start_timeout, http=False)
        self.step_seconds = step_seconds

    def command(self) -> tuple[str, list[str]]:
        return "bench.grpc_floor", [repr(self.step_seconds)]


def split_streams(concurrency: int, num_requests: int, client_processes: int) -> list[tuple[int, int, int]]:
    """(streams, first request, end request) per client process; requests follow the streams' shares.

    `num_requests` is a multiple of `concurrency` (whole waves), so every stream owns the same number.
    """
    processes = max(1, min(client_processes, concurrency))
    per_stream = num_requests // concurrency
    shares, first = [], 0
    for index in range(processes):
        streams = concurrency // processes + (index < concurrency % processes)
        shares.append((streams, first, first + streams * per_stream))
        first += streams * per_stream
    return shares


def run_service_level(
    target: str,
    workload: Workload,
    concurrency: int,
    client_processes: int,
    timeout: float = 1800.0,
    *,
    http_url: str | None = None,
    gateway_pid: int | None = None,
    system: str | None = None,
    hf_serve: dict[str, str] | None = None,
) -> LevelResult:
    """One level through the whole service, streams spread over `client_processes` client processes; over the
    HTTP API at `http_url` when given (system `service_http`), else over gRPC (system `service`). With `hf_serve`
    (`model` and `tokenizer`, see `bench.hf_serve`) the server at `http_url` is `transformers serve` (system
    `hf_serve`; `target` is unused). `system` names another server driven like `service` (`grpc_floor`)."""
    num_requests = workload.requests_for_level(concurrency)
    clients = []
    try:
        for streams, first, end in split_streams(concurrency, num_requests, client_processes):
            spec = {
                "target": target,
                "http_url": http_url,
                "workload": workload.to_dict(),
                "concurrency": streams,
                "requests": [first, end],
                "hf_serve": hf_serve,
            }
            clients.append(_python_module("bench.client_process", json.dumps(spec)))
        for client in clients:
            if _client_answer(client, timeout).strip() != "ready":
                raise RuntimeError("a client process did not report ready")
        workers = descendant_pids(gateway_pid) if gateway_pid else []
        client_pids = [client.pid for client in clients]
        cpu_before = process_cpu_seconds(gateway_pid) if gateway_pid else None
        workers_before, clients_before = total_cpu_seconds(workers), total_cpu_seconds(client_pids)
        for client in clients:  # start every client together
            assert client.stdin is not None
            client.stdin.write("go\n")
            client.stdin.flush()
        results, clients_after = [], 0.0
        for client in clients:
            results.append(json.loads(_client_answer(client, timeout)))
            clients_after += process_cpu_seconds(client.pid) or 0.0  # now: it exits once it has written
        cpu_after = process_cpu_seconds(gateway_pid) if gateway_pid else None
        workers_after = total_cpu_seconds(workers)
    finally:
        for client in clients:
            _stop(client, timeout=30)
    timings = [RequestTiming(r["submit"], r["token_times"]) for result in results for r in result["requests"]]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    protocol = "HTTP (SSE)" if http_url else "gRPC"
    system = system or ("hf_serve" if hf_serve else "service_http" if http_url else "service")
    note = f"{protocol} streams from {len(clients)} client process(es)"
    if hf_serve:
        note = f"transformers serve --continuous-batching, {note}; {HF_SERVE_NOTE}"
    result = summarize(system, concurrency, timings, wall, note)
    if cpu_before is not None and cpu_after is not None and result.output_tokens:
        per_token = 1e6 / result.output_tokens
        result.gateway_cpu_us_per_token = per_token * (cpu_after - cpu_before)
        result.worker_cpu_us_per_token = per_token * (workers_after - workers_before) if workers else None
        result.client_cpu_us_per_token = per_token * (clients_after - clients_before)
    return result
