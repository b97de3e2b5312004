"""Observability of the gateway: traces (OTLP), Prometheus metrics and structured logs. See docs/observability.md.

`Telemetry.from_settings` takes the settings' `telemetry` section and decides once, at start, what is on: tracing
when an OTLP endpoint is configured (see `tracing`), metrics always recorded and served when `metrics_port` is set,
and what the workers are told (`TelemetryConfig`). `build_app` wires its pieces: the interceptor on the gRPC
server, the middleware on the HTTP app, the generation observer given to the front end by the servicer and the
routes, the pool observer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from autoglm_rpc.core.config_sections import TelemetrySettings
from autoglm_rpc.telemetry import semconv
from autoglm_rpc.telemetry.generation import GenerationTelemetry, PoolObserver
from autoglm_rpc.telemetry.http import HttpTelemetryMiddleware
from autoglm_rpc.telemetry.interceptor import TelemetryInterceptor
from autoglm_rpc.telemetry.metrics import GatewayMetrics
from autoglm_rpc.telemetry.tracing import TraceExport, build_tracer_provider, resolve_export
from workers.protocol import TelemetryConfig

logger = logging.getLogger(__name__)


@dataclass
class Telemetry:
    settings: TelemetrySettings
    model_id: str
    export: TraceExport | None
    provider: Any  # the SDK's TracerProvider, or None when tracing is off
    metrics: GatewayMetrics
    metrics_port: int | None = None  # bound once the server starts

    @classmethod
    def from_settings(
        cls, settings: TelemetrySettings, model_id: str, environ: Mapping[str, str] | None = None
    ) -> Telemetry:
        environ = os.environ if environ is None else environ
        export = resolve_export(settings, environ)
        provider = None
        if export is not None:
            provider = build_tracer_provider(export, settings.trace_sample_ratio, environ)
            logger.info("tracing: exporting OTLP (%s) to %s", export.protocol, export.endpoint)
        return cls(settings, model_id, export, provider, GatewayMetrics(model_id))

    @property
    def is_tracing(self) -> bool:
        return self.provider is not None

    @property
    def tracer(self) -> trace.Tracer:
        if self.provider is None:
            return trace.NoOpTracer()
        return self.provider.get_tracer("autoglm_rpc", schema_url=semconv.SCHEMA_URL)

    def worker_config(self) -> TelemetryConfig:
        """What every worker is told: the resolved OTLP target and the worker-side telemetry settings."""
        settings = self.settings
        return TelemetryConfig(
            log_format=settings.log_format,
            otlp_endpoint=self.export.endpoint if self.export else None,
            otlp_protocol=self.export.protocol if self.export else "grpc",
            step_sample_ratio=settings.trace_step_sample_ratio,
            kernel_capture=settings.kernel_capture,
            kernel_capture_interval=settings.kernel_capture_interval,
            kernel_capture_top_k=settings.kernel_capture_top_k,
        )

    def interceptor(self, services: frozenset[str]) -> TelemetryInterceptor:
        return TelemetryInterceptor(self.tracer, self.metrics, services)

    def http_middleware(self, app: Any) -> HttpTelemetryMiddleware:
        return HttpTelemetryMiddleware(app, self.tracer, self.metrics)

    def generation(self) -> GenerationTelemetry:
        return GenerationTelemetry(self.tracer, self.metrics, self.model_id, self.settings.log_prompts)

    def pool_observer(self, pool: Any) -> PoolObserver:
        self.metrics.watch(pool)
        return PoolObserver(self.tracer if self.is_tracing else None, self.metrics, pool)

    def start(self) -> None:
        if self.settings.metrics_port is not None:
            self.metrics_port = self.metrics.start_server(self.settings.metrics_host, self.settings.metrics_port)

    def shutdown(self) -> None:
        """Stop serving metrics and flush the spans still buffered (after the workers have stopped)."""
        self.metrics.stop_server()
        if self.provider is not None:
            self.provider.shutdown()
