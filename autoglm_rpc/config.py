"""The service's settings: one frozen object, built once from flags, environment and an optional file.

Precedence, highest first: command-line flags, `AUTOGLM_<NAME>` variables, the seed documents' aliases
(`MODEL_PATH`, `MODEL_TYPE`, `BATCH_SIZE`, `MAX_SEQ_LENGTH`, `DEVICE`), a TOML file (`--config`, or
`AUTOGLM_CONFIG`) whose keys are the field names, then the defaults below. `Settings.validate()` rejects bad
values with a `ValueError` that names the setting; environment is read in `from_sources` alone.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from workers.protocol import DECODE_MODES

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "int8", "nf4")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "text")
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
KERNEL_CAPTURE = ("off", "request", "always")

# Seed-document names accepted as aliases of our settings (value converters for the odd ones).
ALIASES: dict[str, str] = {
    "MODEL_PATH": "model",
    "MODEL_TYPE": "model_id",
    "BATCH_SIZE": "max_batch_size",
    "MAX_SEQ_LENGTH": "max_seq_len",
    "DEVICE": "device",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `autoglm-rpc serve` can be told. Field names double as TOML keys and `AUTOGLM_*` suffixes."""

    model: str | None = None  # checkpoint directory, or a hub id already in the local cache
    model_id: str | None = None  # the name served as `model`; default: the checkpoint directory's name
    host: str = "127.0.0.1"
    port: int = 50051
    http: bool = True  # serve the OpenAI-compatible HTTP API beside gRPC (--no-http: off)
    http_host: str | None = None  # default: host
    http_port: int = 8000  # 0 picks a free port (logged)
    workers: int | None = None  # default: one per visible GPU with device cuda, else tensor_parallel_size
    # Ranks one replica of the model is split across (tensor parallelism); workers / tensor_parallel_size replicas.
    tensor_parallel_size: int = 1
    collective_timeout: float = 60.0  # seconds a rank waits in an all-reduce before its replica is declared broken
    device: str = "auto"
    dtype: str = "auto"
    quantization: str = "none"
    max_batch_size: int = 32  # running requests per worker
    max_seq_len: int | None = None  # context limit; default: the checkpoint's
    max_num_batched_tokens: int = 512  # per-step token budget of chunked prefill
    max_queue_depth: int = 256  # requests waiting beyond the running batches before QUEUE_FULL
    kv_cache_memory_fraction: float = 0.9  # share of the memory free after the weights load for the KV cache
    kv_cache_tokens: int | None = None  # exact KV-cache size in tokens per worker (instead of the fraction)
    kv_block_size: int = 16  # tokens per KV-cache block (see docs/kv-cache.md)
    enable_prefix_caching: bool = True  # reuse the KV blocks of prompt prefixes already computed
    decode_mode: str = "auto"  # eager | static | cuda_graphs; auto: cuda_graphs on GPU, eager on CPU
    default_max_new_tokens: int = 256  # when neither the request nor generation_config sets one
    max_message_bytes: int = 16 * 1024 * 1024
    reflection: bool = True
    trust_remote_code: bool = False
    allow_download: bool = False
    worker_threads: int | None = None  # torch threads per CPU worker
    worker_start_timeout: float = 600.0
    grace_period: float = 10.0  # seconds in-flight requests get on shutdown (the drain after SIGTERM)
    # Worker supervision (see autoglm_rpc/pool/supervisor.py): a dead worker restarts after a backoff that doubles
    # from restart_backoff_initial up to restart_backoff_max; more than max_restarts_per_window deaths within
    # restart_window seconds is a crash loop, and the worker is not restarted again (0: never restart).
    restart_backoff_initial: float = 1.0
    restart_backoff_max: float = 30.0
    max_restarts_per_window: int = 5
    restart_window: float = 300.0
    # A ready worker silent this long (no engine step, no answer to a liveness ping) is hung: killed and restarted
    # (see autoglm_rpc/pool/watchdog.py for the sizing); 0 turns the watchdog off.
    worker_hang_timeout: float = 120.0
    # Worker messages a stream that is not being read may hold; past it new tokens merge into the last one.
    stream_buffer_messages: int = 64
    log_level: str = "INFO"
    # Observability (see README "Observability"). Tracing is on only when an OTLP endpoint is configured here or
    # through OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, and OTEL_SDK_DISABLED=true turns it off.
    log_format: str = "json"  # JSON lines with trace_id / span_id / request_id, or "text"
    log_prompts: bool = False  # put prompt text in the access log (never in spans)
    metrics_port: int | None = None  # Prometheus text at http://metrics_host:metrics_port/metrics; off when unset
    metrics_host: str = "127.0.0.1"
    otlp_endpoint: str | None = None  # collector base address, e.g. http://collector:4317
    otlp_protocol: str | None = None  # grpc or http/protobuf; default OTEL_EXPORTER_OTLP_PROTOCOL, else grpc
    trace_sample_ratio: float | None = None  # root requests traced; default OTEL_TRACES_SAMPLER, else 0.1
    trace_step_sample_ratio: float = 0.01  # engine steps traced (root spans in the workers)
    kernel_capture: str = "request"  # off, request (x-autoglm-profile: kernels), always (rate-limited)
    kernel_capture_interval: float = 10.0  # at least this many seconds between profiled steps, per worker
    kernel_capture_top_k: int = 0  # spans for the K longest kernels (or CPU operators) of a profiled step
    # Request limits (bad input is refused with INVALID_ARGUMENT naming the field).
    max_stop_sequences: int = 16
    max_stop_sequence_chars: int = 256
    max_top_logprobs: int = 20
    max_prompt_chars: int | None = None  # text of one prompt or chat; default: 16 per token of the context
    max_health_watchers: int = 100  # open Health/Watch streams (open without a key); more get RESOURCE_EXHAUSTED
    # Security: TLS (mutual when tls_client_ca is set), API keys, per-key rate limits, checkpoint integrity.
    tls_cert: str | None = None  # PEM certificate chain of the server
    tls_key: str | None = None  # PEM private key of the server
    tls_client_ca: str | None = None  # PEM CA bundle: clients must present a certificate it signed
    api_keys_file: str | None = None  # lines of `sha256:<hex>  <name>`; when set (or api_keys), calls need a key
    api_keys: str | None = None  # the same lines inline (newline- or comma-separated), e.g. from a secret
    rate_limit_requests_per_minute: int = 0  # per key (or for all callers when no keys are set); 0 = off
    rate_limit_tokens_per_minute: int = 0  # prompt + max_new_tokens reserved per key, unused part refunded
    high_priority_owners: str | None = None  # comma-separated key owners that may send PRIORITY_HIGH (with keys)
    weights_manifest: str | None = None  # `sha256sum`-format file every checkpoint file must match
    allow_pickle_weights: bool = False  # let .bin/.pt weights (pickle: can run code) load when no safetensors

    @classmethod
    def from_sources(
        cls,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        config_file: str | Path | None = None,
    ) -> Settings:
        """Merge file, aliases, `AUTOGLM_*` and flags (None values in `flags` mean "not given"); validate."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        config_file = config_file or environ.get("AUTOGLM_CONFIG")
        if config_file:
            values.update(_read_file(Path(config_file)))
        for alias, name in ALIASES.items():
            if alias in environ:
                values[name] = environ[alias]
        for name in _field_names():
            env_name = f"AUTOGLM_{name.upper()}"
            if env_name in environ:
                values[name] = environ[env_name]
        values.update({k: v for k, v in (flags or {}).items() if v is not None})
        settings = cls(**{name: _coerce(name, value) for name, value in values.items()})
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        _check_choice("device", self.device, DEVICES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("quantization", self.quantization, QUANTIZATIONS)
        _check_choice("log_level", self.log_level, LOG_LEVELS)
        _check_choice("decode_mode", self.decode_mode, DECODE_MODES)
        if not 0 < self.kv_cache_memory_fraction <= 1:
            raise ValueError(f"kv_cache_memory_fraction must be in (0, 1], got {self.kv_cache_memory_fraction}")
        self._validate_observability()
        for name in ("port", "http_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be in 0..65535, got {getattr(self, name)}")
        for name in ("max_batch_size", "max_num_batched_tokens", "default_max_new_tokens", "max_message_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.kv_block_size <= 1024:
            raise ValueError(f"kv_block_size must be in 1..1024, got {self.kv_block_size}")
        self._validate_tensor_parallel()
        for name in ("workers", "max_seq_len", "worker_threads", "kv_cache_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.max_num_batched_tokens < self.max_batch_size:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least max_batch_size "
                f"({self.max_batch_size}): every running request decodes one token per step"
            )
        if self.max_queue_depth < 0:
            raise ValueError(f"max_queue_depth must be 0 or more, got {self.max_queue_depth}")
        if self.worker_start_timeout <= 0 or self.grace_period < 0:
            raise ValueError("worker_start_timeout must be positive and grace_period not negative")
        self._validate_supervision()
        self._validate_limits()
        self._validate_security()

    def _validate_tensor_parallel(self) -> None:
        size = self.tensor_parallel_size
        if size < 1:
            raise ValueError(f"tensor_parallel_size must be at least 1, got {size}")
        if self.workers is not None and self.workers % size:
            raise ValueError(
                f"workers ({self.workers}) must be a multiple of tensor_parallel_size ({size}): each replica of "
                f"the model is {size} worker processes"
            )
        if not self.collective_timeout > 0:
            raise ValueError(f"collective_timeout must be positive, got {self.collective_timeout}")

    def _validate_supervision(self) -> None:
        for name in ("restart_backoff_initial", "restart_backoff_max", "restart_window"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.restart_backoff_max < self.restart_backoff_initial:
            raise ValueError(
                f"restart_backoff_max ({self.restart_backoff_max}) must be at least restart_backoff_initial "
                f"({self.restart_backoff_initial})"
            )
        if self.max_restarts_per_window < 0:
            raise ValueError(f"max_restarts_per_window must be 0 or more, got {self.max_restarts_per_window}")
        if self.stream_buffer_messages < 1:
            raise ValueError(f"stream_buffer_messages must be at least 1, got {self.stream_buffer_messages}")
        if not self.worker_hang_timeout >= 0:
            raise ValueError(f"worker_hang_timeout must be 0 (off) or more, got {self.worker_hang_timeout}")

    def _validate_observability(self) -> None:
        _check_choice("log_format", self.log_format, LOG_FORMATS)
        _check_choice("kernel_capture", self.kernel_capture, KERNEL_CAPTURE)
        if self.otlp_protocol is not None:
            _check_choice("otlp_protocol", self.otlp_protocol, OTLP_PROTOCOLS)
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        for name in ("trace_sample_ratio", "trace_step_sample_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.kernel_capture_interval < 0:
            raise ValueError(f"kernel_capture_interval must be 0 or more, got {self.kernel_capture_interval}")
        if not 0 <= self.kernel_capture_top_k <= 1000:
            raise ValueError(f"kernel_capture_top_k must be in 0..1000, got {self.kernel_capture_top_k}")

    def _validate_limits(self) -> None:
        for name in ("max_stop_sequences", "max_stop_sequence_chars", "max_top_logprobs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.max_health_watchers < 1:
            raise ValueError(f"max_health_watchers must be at least 1, got {self.max_health_watchers}")
        if self.max_prompt_chars is not None and self.max_prompt_chars < 1:
            raise ValueError(f"max_prompt_chars must be at least 1, got {self.max_prompt_chars}")

    def _validate_security(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both, or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        for name in ("rate_limit_requests_per_minute", "rate_limit_tokens_per_minute"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (off) or more, got {getattr(self, name)}")


def _field_names() -> list[str]:
    return [f.name for f in fields(Settings)]


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"config file {path}: {exc}") from exc
    unknown = sorted(set(data) - set(_field_names()))
    if unknown:
        raise ValueError(f"config file {path}: unknown settings {', '.join(unknown)}")
    return data


def _coerce(name: str, value: Any) -> Any:
    """Turn a string from the environment into the field's type; typed values pass through."""
    if name not in _field_names():
        raise ValueError(f"unknown setting {name!r}")
    if not isinstance(value, str):
        return value
    kind = Settings.__dataclass_fields__[name].type
    text = value.strip()
    try:
        if kind in ("bool",):
            if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(text)
            return text.lower() in ("1", "true", "yes", "on")
        if kind in ("int", "int | None"):
            return None if text == "" and "None" in kind else int(text)
        if kind in ("float", "float | None"):
            return None if text == "" and "None" in kind else float(text)
    except ValueError:
        raise ValueError(f"{name} must be a {kind.split(' ')[0]}, got {value!r}") from None
    if name == "device":
        return {"gpu": "cuda"}.get(text.lower(), text.lower())
    if name in ("dtype", "quantization", "log_format", "kernel_capture", "otlp_protocol", "decode_mode"):
        text = text.lower()
    if name == "log_level":
        return text.upper()
    return text or None if "None" in kind else text


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
