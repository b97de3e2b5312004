"""The gateway's Prometheus metrics: request latencies and token counts it sees itself, worker gauges it is told.

The gateway sees every token, so it measures the request metrics; the workers report their load (running and
waiting requests, KV-cache use) on every `StepOutput`, and the gauges are read from those reports when Prometheus
scrapes (`--metrics-port`, text format at `/metrics`; OpenMetrics when the scraper asks for it). Labels are
bounded: `model` (the one served model), `worker` (0..N-1), `rank` (0..tensor_parallel_size-1), `protocol` (grpc
or http), `code` (a gRPC status name, or an HTTP status for http) and `state` (a `WorkerState` value).

Histogram buckets are the OpenTelemetry GenAI semantic conventions' (v1.37.0) for the three `gen_ai_server_*`
metrics.
"""

from __future__ import annotations

import collections
import errno
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from autoglm_rpc.pool.handle import WorkerState
from workers.protocol import StepOutput

if TYPE_CHECKING:
    from autoglm_rpc.pool.pool import WorkerPool

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


# What a worker that has not reported yet (or is not ready) counts as.
_IDLE = StepOutput(deltas=())


class GatewayMetrics:
    """Every metric of one gateway, in its own registry (so several servers can live in one test process).

    Recording methods run on the event loop; `collect` runs on the HTTP server's thread and only reads.
    """

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.registry = CollectorRegistry()
        registry, model = self.registry, ["model"]
        self.request_duration = Histogram(
            "gen_ai_server_request_duration_seconds", "Generation request duration, to the last output token.",
            model, unit="seconds", buckets=DURATION_BUCKETS, registry=registry,
        ).labels(model_id)  # fmt: skip
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds", "Time to the first output token of successful requests.",
            model, unit="seconds", buckets=TTFT_BUCKETS, registry=registry,
        ).labels(model_id)  # fmt: skip
        self.time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, of successful requests.",
            model, unit="seconds", buckets=TPOT_BUCKETS, registry=registry,
        ).labels(model_id)  # fmt: skip
        self.prompt_tokens = Counter(
            "autoglm_prompt_tokens_total", "Prompt tokens of admitted requests.", model, unit="tokens",
            registry=registry,
        ).labels(model_id)  # fmt: skip
        self.output_tokens = Counter(
            "autoglm_output_tokens_total", "Output tokens streamed to callers.", model, unit="tokens",
            registry=registry,
        ).labels(model_id)  # fmt: skip
        self._requests = Counter(
            "autoglm_requests_total",
            "Generation calls by protocol (grpc: Generate and GenerateStream; http: the OpenAI completion routes) "
            "and final status (a gRPC status name, or the HTTP status).",
            ["model", "protocol", "code"], registry=registry,
        )  # fmt: skip
        self._loads: dict[int, StepOutput] = {}  # each worker's latest step report (its load and KV counters)
        self._restarts: collections.Counter[int] = collections.Counter()
        self._pool: WorkerPool | None = None
        self._server: Any = None

    # -- recording (event loop) ---------------------------------------------------------------------------------

    def record_request(self, code: str, duration: float, protocol: str = "grpc") -> None:
        self._requests.labels(self.model_id, protocol, code).inc()
        self.request_duration.observe(duration)

    def record_load(self, worker_id: int, output: StepOutput) -> None:
        self._loads[worker_id] = output

    def record_worker_restart(self, worker_id: int) -> None:
        """For the worker supervisor: a worker process was started again."""
        self._restarts[worker_id] += 1

    def watch(self, pool: WorkerPool) -> None:
        """Report the gauges of this pool's workers."""
        self._pool = pool
        self.registry.register(_PoolCollector(self))

    # -- exposition ---------------------------------------------------------------------------------------------

    def start_server(self, host: str, port: int) -> int:
        """Serve `/metrics` on a daemon thread; return the bound port (port 0 picks a free one). OSError naming
        the setting when the port cannot be bound."""
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:  # said as the gRPC and HTTP ports' refusals say it
                message = (
                    f"metrics: port {port} on {host} is in use; stop what listens there or pick another "
                    "--metrics-port"
                )
            else:
                message = f"metrics: could not bind {host}:{port}: {exc.strerror or exc}"
            raise OSError(exc.errno, message) from None
        bound = self._server.server_address[1]
        logger.info("metrics at http://%s:%d/metrics", host, bound)
        return bound

    def stop_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def collect_workers(self) -> Iterator[Metric]:
        labels = ["model", "worker"]
        up = GaugeMetricFamily("autoglm_worker_up", "1 while the worker is ready to serve, else 0.", labels=labels)
        restarts = CounterMetricFamily(
            "autoglm_worker_restarts", "Times the worker process was restarted.", labels=labels
        )
        loads = _load_families(labels)
        for worker in self._pool.workers if self._pool is not None else ():
            values = [self.model_id, str(worker.worker_id)]
            # A worker that is not ready serves nothing, whatever it last reported.
            load = self._loads.get(worker.worker_id) if worker.is_ready else None
            up.add_metric(values, 1.0 if worker.is_ready else 0.0)
            restarts.add_metric(values, self._restarts[worker.worker_id])
            for family, value_of in loads:
                family.add_metric(values, value_of(load or _IDLE))
        yield from (up, *(family for family, _ in loads), restarts)
        yield self._worker_states()
        yield self._rank_weights()

    def _worker_states(self) -> Metric:
        """A state set: one series per worker and `WorkerState`, 1 for the state it is in and 0 for the others (so
        a dashboard can count workers per state, and a worker's series do not vanish when it changes state)."""
        family = GaugeMetricFamily(
            "autoglm_worker_state", "1 for the worker's current state (starting, ready, restarting, ...), else 0.",
            labels=["model", "worker", "state"],
        )  # fmt: skip
        for worker in self._pool.workers if self._pool is not None else ():
            values = [self.model_id, str(worker.worker_id)]
            for state in WorkerState:
                family.add_metric([*values, state.value], float(worker.state is state))
        return family

    def _rank_weights(self) -> Metric:
        """Tensor parallelism: the weight bytes each rank of each ready replica holds (none without it)."""
        family = GaugeMetricFamily(
            "autoglm_rank_weight_bytes", "Bytes of model weights a rank of a split replica holds.",
            labels=["model", "worker", "rank"], unit="bytes",
        )  # fmt: skip
        for worker in self._pool.workers if self._pool is not None else ():
            for rank in worker.model.ranks if worker.is_ready and worker.model is not None else ():
                family.add_metric([self.model_id, str(worker.worker_id), str(rank.rank)], rank.weight_bytes)
        return family


def _load_families(labels: list[str]) -> list[tuple[Metric, Callable[[StepOutput], float]]]:
    """The per-worker families read from its last step report, each with how to read its value."""
    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    return [
        (gauge("autoglm_running_requests", "Requests in the worker's batch.", labels=labels),
         lambda load: load.num_running),
        (gauge("autoglm_queue_depth", "Requests admitted to the worker, waiting for a batch slot.", labels=labels),
         lambda load: load.num_waiting),
        (gauge("autoglm_kv_cache_usage_ratio", "Fraction of the worker's KV-cache blocks in use.", labels=labels,
               unit="ratio"), lambda load: load.kv_cache_usage),
        (gauge("autoglm_kv_cache_blocks_used", "KV-cache blocks held by running requests.", labels=labels),
         lambda load: load.kv_blocks_used),
        (gauge("autoglm_kv_cache_blocks_free", "KV-cache blocks free or holding evictable cached prefixes.",
               labels=labels), lambda load: load.kv_blocks_free),
        (counter("autoglm_prefix_cache_prompt_tokens", "Prompt tokens admitted by the worker's process.",
                 labels=labels, unit="tokens"), lambda load: load.prompt_tokens),
        (counter("autoglm_prefix_cache_hit_tokens", "Prompt tokens found in the prefix cache, not prefilled.",
                 labels=labels, unit="tokens"), lambda load: load.cached_prompt_tokens),
        (gauge("autoglm_prefix_cache_hit_ratio", "Share of admitted prompt tokens found in the prefix cache.",
               labels=labels, unit="ratio"), lambda load: load.cached_prompt_tokens / max(1, load.prompt_tokens)),
        (counter("autoglm_kv_cache_preemptions", "Requests preempted (and later recomputed) for lack of blocks.",
                 labels=labels), lambda load: load.preemptions),
    ]  # fmt: skip


class _PoolCollector:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect_workers()
