"""What turns tracing on and where it exports: settings, the standard OTEL_* variables, OTEL_SDK_DISABLED."""

from __future__ import annotations

import pytest

from autoglm_rpc.core.config_sections import TelemetrySettings
from autoglm_rpc.startup.config import Settings
from autoglm_rpc.telemetry import Telemetry
from autoglm_rpc.telemetry.tracing import TraceExport, resolve_export


def test_tracing_is_off_without_an_endpoint() -> None:
    assert resolve_export(TelemetrySettings(), environ={}) is None
    telemetry = Telemetry.from_settings(TelemetrySettings(), "m", environ={})
    assert telemetry.provider is None and not telemetry.is_tracing
    assert telemetry.worker_config().otlp_endpoint is None


@pytest.mark.parametrize(
    ("settings", "environ", "expected"),
    [
        (TelemetrySettings(otlp_endpoint="http://c:4317"), {}, TraceExport("http://c:4317", "grpc")),
        (TelemetrySettings(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
         TraceExport("http://c:4317", "grpc")),
        (
            TelemetrySettings(),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            TraceExport("http://c:4318/v1/traces", "http/protobuf"),
        ),
        (
            TelemetrySettings(otlp_protocol="http/protobuf"),
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom"},
            TraceExport("http://c:4318/custom", "http/protobuf"),  # a signal-specific endpoint is used as is
        ),
        (TelemetrySettings(otlp_endpoint="http://mine:4317"), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4317"},
         TraceExport("http://mine:4317", "grpc")),
    ],
)  # fmt: skip
def test_export_target(settings: TelemetrySettings, environ: dict[str, str], expected: TraceExport) -> None:
    assert resolve_export(settings, environ) == expected


@pytest.mark.parametrize(
    "environ", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_SDK_DISABLED": "TRUE"}, {"OTEL_TRACES_EXPORTER": "none"}]
)
def test_sdk_disabled_turns_everything_off(environ: dict[str, str]) -> None:
    environ = {**environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    settings = TelemetrySettings(otlp_endpoint="http://c:4317")
    telemetry = Telemetry.from_settings(settings, "m", environ=environ)
    assert telemetry.provider is None
    assert telemetry.worker_config().otlp_endpoint is None  # the workers build no provider either


def test_a_bad_protocol_from_the_environment_is_named() -> None:
    with pytest.raises(ValueError, match="otlp_protocol"):
        resolve_export(
            TelemetrySettings(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
        )


def test_observability_settings_from_the_environment() -> None:
    environ = {
        "AUTOGLM_METRICS_PORT": "9464",
        "AUTOGLM_TRACE_SAMPLE_RATIO": "0.25",
        "AUTOGLM_LOG_FORMAT": "TEXT",
        "AUTOGLM_LOG_PROMPTS": "true",
        "AUTOGLM_KERNEL_CAPTURE": "always",
        "AUTOGLM_OTLP_PROTOCOL": "http/protobuf",
    }
    settings = Settings.from_sources({}, environ=environ)
    assert (settings.metrics_port, settings.trace_sample_ratio, settings.log_format) == (9464, 0.25, "text")
    assert (settings.log_prompts, settings.kernel_capture, settings.otlp_protocol) == (
        True,
        "always",
        "http/protobuf",
    )
    assert Settings.from_sources({}, environ={}).log_format == "json"


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        ({"AUTOGLM_TRACE_SAMPLE_RATIO": "1.5"}, "trace_sample_ratio"),
        ({"AUTOGLM_TRACE_STEP_SAMPLE_RATIO": "-0.1"}, "trace_step_sample_ratio"),
        ({"AUTOGLM_KERNEL_CAPTURE": "sometimes"}, "kernel_capture"),
        ({"AUTOGLM_LOG_FORMAT": "xml"}, "log_format"),
        ({"AUTOGLM_OTLP_PROTOCOL": "udp"}, "otlp_protocol"),
        ({"AUTOGLM_METRICS_PORT": "70000"}, "metrics_port"),
        ({"AUTOGLM_KERNEL_CAPTURE_INTERVAL": "-1"}, "kernel_capture_interval"),
    ],
)
def test_bad_observability_settings_are_named(environ: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_sources({}, environ=environ)
