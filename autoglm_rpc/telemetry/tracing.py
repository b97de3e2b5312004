"""The gateway's TracerProvider: where traces go, how requests are sampled, and when tracing is off.

Tracing is on only when an OTLP endpoint is configured: the `otlp_endpoint` setting, else the standard
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` variables. `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` turn it off whatever else is set. Off means no provider, no exporter thread and no
span objects: the gateway uses the API's no-op tracer. The protocol is `otlp_protocol`, else
`OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`, else grpc; a base endpoint gets `/v1/traces` appended for HTTP, as the
OTLP specification says. Requests are sampled parent-based (an upstream decision in `traceparent` is honoured),
roots at `trace_sample_ratio`, else as `OTEL_TRACES_SAMPLER` says, else 10 %.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoglm_rpc.core.config_sections import OTLP_PROTOCOLS, TelemetrySettings

SERVICE_NAME = "autoglm-rpc-gateway"
DEFAULT_SAMPLE_RATIO = 0.1


@dataclass(frozen=True, slots=True)
class TraceExport:
    """Where spans go: the exporter's full traces endpoint and its protocol (grpc or http/protobuf)."""

    endpoint: str
    protocol: str


def is_sdk_disabled(environ: Mapping[str, str]) -> bool:
    return environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def resolve_export(settings: TelemetrySettings, environ: Mapping[str, str] | None = None) -> TraceExport | None:
    """The OTLP target for every process, or None when tracing is off (see the module docstring)."""
    environ = os.environ if environ is None else environ
    if is_sdk_disabled(environ) or environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    protocol = (
        settings.otlp_protocol
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol not in OTLP_PROTOCOLS:
        raise ValueError(f"otlp_protocol must be one of {', '.join(OTLP_PROTOCOLS)}; got {protocol!r}")
    if settings.otlp_endpoint:
        base = settings.otlp_endpoint
    elif environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return TraceExport(environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"], protocol)
    elif environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        base = environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    else:
        return None
    if protocol == "http/protobuf" and not base.rstrip("/").endswith("/v1/traces"):
        base = base.rstrip("/") + "/v1/traces"
    return TraceExport(base, protocol)


def build_tracer_provider(
    export: TraceExport, sample_ratio: float | None, environ: Mapping[str, str] | None = None
) -> Any:
    """A TracerProvider exporting to `export` in batches; the SDK imports happen only here."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    environ = os.environ if environ is None else environ
    sampler = None  # None: the SDK reads OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG
    if sample_ratio is not None or "OTEL_TRACES_SAMPLER" not in environ:
        ratio = DEFAULT_SAMPLE_RATIO if sample_ratio is None else sample_ratio
        sampler = ParentBased(TraceIdRatioBased(ratio))
    attributes: dict[str, Any] = {"process.pid": os.getpid()}
    if "OTEL_SERVICE_NAME" not in environ:
        attributes["service.name"] = SERVICE_NAME
    provider = TracerProvider(sampler=sampler, resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(span_exporter(export)))
    return provider


def span_exporter(export: TraceExport) -> Any:
    if export.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=export.endpoint)
