"""A/B benchmark: what tracing at 10 % request sampling costs in throughput and time to first token.

Two servers over the same checkpoint run side by side in this process tree: A with tracing off, B with tracing on
(10 % of requests, the default 1 % of engine steps, kernel capture only on request), exporting OTLP/gRPC to an
in-process sink. The same streaming workload then runs against A and B in alternating rounds (A B A B ...), so
drift in the machine's load hits both alike. Reported: output tokens per second and client-side time to first
token (p50) per arm, as the median over rounds, and B relative to A; and, since wall-clock figures on a shared
machine are noisy, the CPU time each arm spent per 1,000 output tokens (the gateway's event-loop thread plus the
worker process, read from /proc), which other processes' load barely moves. The budget (docs/tracing.md): under 1 %
throughput and under 1 ms p50 TTFT. It is a benchmark, not a test: it asserts nothing.

    .venv/bin/python bench/tracing_overhead.py                 # CPU, the demo-sized random checkpoint
    .venv/bin/python bench/tracing_overhead.py --device cuda --model /models/glm-4-9b-chat-hf \
        --max-seq-len 512 --kv-cache-memory-fraction 0.2     # both servers' KV caches fit on one GPU
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoglm.v1 import generation_pb2, generation_pb2_grpc, types_pb2  # noqa: E402
from autoglm_rpc.startup.config import Settings  # noqa: E402
from autoglm_rpc.startup.server import App, build_app  # noqa: E402


class SpanSink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC receiver that counts spans and keeps nothing."""

    def __init__(self) -> None:
        self.num_spans = 0
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def Export(self, request, context):  # noqa: N802
        count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self._lock:
            self.num_spans += count
        return trace_service_pb2.ExportTraceServiceResponse()

    def stop(self) -> None:
        self._server.stop(None)


class Server:
    """One App on its own event loop thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app: App | None = None
        self.loop_thread_id = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def start(self) -> Server:
        self._thread.start()
        self._ready.wait(600)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def cpu_seconds(self) -> float:
        """CPU time so far of this server's event-loop thread and of its worker processes."""
        assert self.app is not None
        total = _cpu_seconds(f"/proc/self/task/{self.loop_thread_id}/stat")
        return total + sum(_cpu_seconds(f"/proc/{w.pid}/stat") for w in self.app.pool.workers if w.pid)

    @property
    def target(self) -> str:
        assert self.app is not None
        return f"127.0.0.1:{self.app.port}"

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self.loop_thread_id = threading.get_native_id()
        self.app = build_app(self.settings)
        await self.app.start()
        await self.app.wait_until_ready()
        self._ready.set()
        await self._stop.wait()
        await self.app.stop(grace=1.0)


def _cpu_seconds(stat_path: str) -> float:
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@dataclass
class RoundResult:
    tokens_per_second: float
    ttft_p50_ms: float
    cpu_ms_per_1k_tokens: float = 0.0


def measured_round(server: Server, args: argparse.Namespace, prompt: str) -> RoundResult:
    cpu_before = server.cpu_seconds()
    result = run_round(server.target, args.concurrency, args.requests, args.max_new_tokens, prompt)
    num_tokens = args.requests * args.max_new_tokens
    result.cpu_ms_per_1k_tokens = 1e6 * (server.cpu_seconds() - cpu_before) / num_tokens
    return result


def run_round(target: str, concurrency: int, num_requests: int, max_new_tokens: int, prompt: str) -> RoundResult:
    request = generation_pb2.GenerateStreamRequest(
        prompt=prompt,
        stopping=types_pb2.StopOptions(max_new_tokens=max_new_tokens, ignore_eos=True),
        output=types_pb2.OutputOptions(return_token_ids=True),
    )

    def one(stub: generation_pb2_grpc.GenerationServiceStub) -> tuple[int, float]:
        started = time.perf_counter()
        first, num_tokens = None, 0
        for message in stub.GenerateStream(request, timeout=600):
            if message.token_ids and first is None:
                first = time.perf_counter() - started
            num_tokens += len(message.token_ids)
        return num_tokens, first or 0.0

    with grpc.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        started = time.perf_counter()
        with futures.ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(lambda _: one(stub), range(num_requests)))
        elapsed = time.perf_counter() - started
    tokens = sum(n for n, _ in results)
    return RoundResult(tokens / elapsed, 1e3 * statistics.median(t for _, t in results))


def settings_for(args: argparse.Namespace, model: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model": model,
        "port": 0,
        "http": False,
        "device": args.device,
        "workers": 1,
        "max_batch_size": args.concurrency,
        "max_num_batched_tokens": max(512, args.concurrency),
        "log_level": "WARNING",
        "worker_threads": args.worker_threads,
    }
    # Two servers share one device: on a GPU, each must keep its KV cache small enough to leave room for the other.
    if args.max_seq_len is not None:
        values["max_seq_len"] = args.max_seq_len
    if args.kv_cache_memory_fraction is not None:
        values["kv_cache_memory_fraction"] = args.kv_cache_memory_fraction
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: build the demo-sized random one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per arm, alternating")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32, help="requests per round")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--worker-threads", type=int, default=None)
    parser.add_argument("--max-seq-len", type=int, default=None, help="context limit (default: the checkpoint's)")
    parser.add_argument(
        "--kv-cache-memory-fraction", type=float, default=None, help="each server's share of free memory for KV"
    )
    parser.add_argument("--sample-ratio", type=float, default=0.1)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            from workers.model.checkpoints import DEMO_SPEC, build_checkpoint

            model = str(build_checkpoint(Path(scratch) / "demo", DEMO_SPEC))
        sink = SpanSink()
        plain = Server(settings_for(args, model)).start()
        traced = Server(
            settings_for(
                args, model, otlp_endpoint=f"http://127.0.0.1:{sink.port}", trace_sample_ratio=args.sample_ratio
            )
        ).start()
        try:
            prompt = "The quick brown fox jumps over the lazy dog. " * 4
            run_round(plain.target, args.concurrency, args.concurrency, 4, prompt)  # warm both paths up
            run_round(traced.target, args.concurrency, args.concurrency, 4, prompt)
            results: dict[str, list[RoundResult]] = {"off": [], "on": []}
            for _ in range(args.rounds):
                for arm, server in (("off", plain), ("on", traced)):
                    results[arm].append(measured_round(server, args, prompt))
        finally:
            traced.stop()
            plain.stop()
            sink.stop()
    report = _report(results, sink.num_spans, args)
    print(json.dumps(report) if args.json else _text(report))
    return 0


def _report(results: dict[str, list[RoundResult]], num_spans: int, args: argparse.Namespace) -> dict[str, object]:
    def median(arm: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in results[arm])

    off_tps, on_tps = median("off", "tokens_per_second"), median("on", "tokens_per_second")
    off_ttft, on_ttft = median("off", "ttft_p50_ms"), median("on", "ttft_p50_ms")
    off_cpu, on_cpu = median("off", "cpu_ms_per_1k_tokens"), median("on", "cpu_ms_per_1k_tokens")
    return {
        "device": args.device,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "max_new_tokens": args.max_new_tokens,
        "sample_ratio": args.sample_ratio,
        "throughput_off_tok_s": round(off_tps, 1),
        "throughput_on_tok_s": round(on_tps, 1),
        "throughput_change_pct": round(100 * (on_tps - off_tps) / off_tps, 2),
        "ttft_p50_off_ms": round(off_ttft, 2),
        "ttft_p50_on_ms": round(on_ttft, 2),
        "ttft_p50_change_ms": round(on_ttft - off_ttft, 2),
        "cpu_ms_per_1k_tokens_off": round(off_cpu, 1),
        "cpu_ms_per_1k_tokens_on": round(on_cpu, 1),
        "cpu_change_pct": round(100 * (on_cpu - off_cpu) / off_cpu, 2) if off_cpu else None,
        "spans_exported": num_spans,
        "rounds_off_tok_s": [round(r.tokens_per_second, 1) for r in results["off"]],
        "rounds_on_tok_s": [round(r.tokens_per_second, 1) for r in results["on"]],
    }


def _text(report: dict[str, object]) -> str:
    return "\n".join(
        [
            f"tracing overhead on {report['device']}: {report['rounds']} alternating rounds per arm, "
            f"{report['requests_per_round']} requests x {report['max_new_tokens']} tokens, "
            f"concurrency {report['concurrency']}, sampling {report['sample_ratio']}",
            f"  throughput  off {report['throughput_off_tok_s']} tok/s   "
            f"on {report['throughput_on_tok_s']} tok/s   change {report['throughput_change_pct']} %",
            f"  CPU per 1k tokens  off {report['cpu_ms_per_1k_tokens_off']} ms   "
            f"on {report['cpu_ms_per_1k_tokens_on']} ms   change {report['cpu_change_pct']} %",
            f"  TTFT p50    off {report['ttft_p50_off_ms']} ms   on {report['ttft_p50_on_ms']} ms   "
            f"change {report['ttft_p50_change_ms']} ms",
            f"  spans exported by the traced arm: {report['spans_exported']}",
            f"  per round (tok/s) off {report['rounds_off_tok_s']}  on {report['rounds_on_tok_s']}",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
