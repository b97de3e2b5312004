"""Builds a worker's telemetry after spawn: its own TracerProvider and OTLP exporter, or nothing at all.

Tracing is on in a worker when the gateway resolved an OTLP endpoint for it (`TelemetryConfig.otlp_endpoint`) and
`OTEL_SDK_DISABLED` is not true; otherwise `start_telemetry` returns a `WorkerTelemetry` whose hooks do nothing and
no exporter thread exists. The exporter (gRPC or HTTP, imported only then) reads the other standard `OTEL_*`
variables itself (headers, timeout, compression, certificates); the batch processor reads `OTEL_BSP_*`.
`shutdown()` ends the spans still open and flushes: the worker calls it on every way out, including the
gateway's pipe closing when the gateway crashed.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from workers.protocol import RequestFailed, StepOutput, Submit, WorkerConfig
from workers.telemetry import names

logger = logging.getLogger(__name__)

SERVICE_NAME = "autoglm-rpc-worker"


class WorkerTelemetry:
    """The worker loop's hooks; this base class is tracing off and does nothing."""

    def on_submit(self, submit: Submit) -> None:
        """A request arrived (before the engine sees it)."""

    def run_step(self, engine: Any) -> StepOutput:
        """Run one engine step."""
        return engine.step()

    def on_failures(self, failures: list[RequestFailed]) -> list[RequestFailed]:
        """Requests that failed; returned unchanged for the caller to send."""
        return failures

    def on_withdrawn(self, request_ids: tuple[str, ...]) -> None:
        """Requests given back to the gateway before they started (they go on in another worker)."""

    def shutdown(self) -> None:
        """Flush what was recorded; called once, as the worker stops."""


class TracingWorkerTelemetry(WorkerTelemetry):
    def __init__(self, provider: Any, config: WorkerConfig) -> None:
        from workers.telemetry.requests import RequestSpans
        from workers.telemetry.steps import StepTracer

        self._provider = provider
        tracer = provider.get_tracer("autoglm_rpc.worker", schema_url=names.SCHEMA_URL)
        self._requests = RequestSpans(tracer, config.worker_id)
        self._steps = StepTracer(tracer, self._requests, config.telemetry, config.worker_id)

    def on_submit(self, submit: Submit) -> None:
        self._requests.start(submit)
        self._steps.on_submit(submit)

    def run_step(self, engine: Any) -> StepOutput:
        output = self._steps.run(engine)
        self._requests.on_output(output)
        return output

    def on_failures(self, failures: list[RequestFailed]) -> list[RequestFailed]:
        if failures:
            self._requests.on_failures(failures)
        return failures

    def on_withdrawn(self, request_ids: tuple[str, ...]) -> None:
        self._requests.close(request_ids, "moved to another worker before it started")

    def shutdown(self) -> None:
        self._requests.close_all("worker stopped")
        self._provider.shutdown()


def is_sdk_disabled(environ: Any = None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def start_telemetry(config: WorkerConfig) -> WorkerTelemetry:
    """The worker's telemetry: tracing when an endpoint is configured and the SDK is not disabled."""
    telemetry = config.telemetry
    if telemetry.otlp_endpoint is None or is_sdk_disabled():
        return WorkerTelemetry()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    # The process's identity rides on every span it exports: which replica, and which rank of its split (rank 0,
    # the one that schedules and owns the pipe, is the one that traces; its steps include the all-reduces).
    attributes: dict[str, Any] = {
        names.WORKER_ID: config.worker_id,
        names.RANK: 0,
        names.TENSOR_PARALLEL_SIZE: config.tensor_parallel_size,
        "process.pid": os.getpid(),
    }
    if "OTEL_SERVICE_NAME" not in os.environ:
        attributes["service.name"] = SERVICE_NAME
    # Requests follow the sampled flag of their carrier; steps are sampled by StepTracer before a span exists.
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON), resource=Resource.create(attributes))
    exporter = _exporter(telemetry.otlp_protocol, telemetry.otlp_endpoint)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    logger.info(
        "worker %d exports traces to %s (%s)", config.worker_id, telemetry.otlp_endpoint, telemetry.otlp_protocol
    )
    return TracingWorkerTelemetry(provider, config)


def _exporter(protocol: str, endpoint: str) -> Any:
    if protocol == "grpc":
        # The OTLP/gRPC exporter brings grpc into this process for exporting only; the worker's code never uses it.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=endpoint)
