"""The service's settings: one frozen object of sections, built once from flags, environment and an optional file.

Precedence, highest first: command-line flags, `AUTOGLM_<NAME>` variables, the seed documents' aliases
(`MODEL_PATH`, `MODEL_TYPE`, `BATCH_SIZE`, `MAX_SEQ_LENGTH`, `DEVICE`), a TOML file (`--config`, or
`AUTOGLM_CONFIG`) whose keys are the setting names (at the top level, or in a table named after the setting's
section), then the defaults. `Settings.validate()` rejects bad values with a `ValueError` that names the setting;
environment is read in `from_sources` alone.

Sections and the parts that take them as they are (see `config_sections.py`; every setting has one flat name,
unique across sections, and `SECTION_OF` says where it lives):
- `server` (ServerSettings): the gRPC and HTTP listeners, `server.build_app` and `openai_api.build_http_server`.
- `checkpoint` (CheckpointSettings): `server.load_served_model`; its loading options reach the workers.
- `engine` (EngineSettings): `devices.plan_workers`, which maps it onto each `workers.protocol.WorkerConfig` by
  field name (`WorkerConfig` stays in `workers/`, which never imports the gateway).
- `pool` (PoolSettings): `pool.WorkerPool` (admission, restarts, watchdog, stream buffers) and the drain.
- `limits` (`requests.RequestLimits`): the bounds both protocol edges check requests against.
- `telemetry` (TelemetrySettings): `telemetry.Telemetry`, which also derives the workers' `TelemetryConfig`.
- `security` (SecuritySettings): `security.Security` (API keys, rate limits, priority owners, TLS).
- `media` (MediaSettings): `media.ImageIntake`, through the front end (limits on images, local files, how the
  chat template takes content parts).
`Settings(max_batch_size=4)` places a setting given by its flat name in its section, and `settings.max_batch_size`
reads it back; the parts themselves take `settings.engine` and the like.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from autoglm_rpc.core.config_sections import (
    CONTENT_FORMATS,
    OTLP_PROTOCOLS,
    CheckpointSettings,
    EngineSettings,
    MediaSettings,
    PoolSettings,
    SecuritySettings,
    ServerSettings,
    TelemetrySettings,
)
from autoglm_rpc.core.requests import MAX_MODEL_NAME_CHARS, RequestLimits
from autoglm_rpc.startup.config_checks import check_listeners
from workers.protocol import DECODE_MODES

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "int8", "nf4")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "text")
KERNEL_CAPTURE = ("off", "request", "always")

# Seed-document names accepted as aliases of our settings (value converters for the odd ones).
ALIASES: dict[str, str] = {
    "MODEL_PATH": "model",
    "MODEL_TYPE": "model_id",
    "BATCH_SIZE": "max_batch_size",
    "MAX_SEQ_LENGTH": "max_seq_len",
    "DEVICE": "device",
}

# Section name -> its type, in the order `Settings` holds them.
SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "checkpoint": CheckpointSettings,
    "engine": EngineSettings,
    "pool": PoolSettings,
    "limits": RequestLimits,
    "telemetry": TelemetrySettings,
    "security": SecuritySettings,
    "media": MediaSettings,
}
# Setting name (TOML key, AUTOGLM_* suffix, flag) -> the section that holds it.
SECTION_OF: dict[str, str] = {f.name: section for section, kind in SECTIONS.items() for f in fields(kind)}


@dataclass(frozen=True, slots=True, init=False)
class Settings:
    """Everything `autoglm-rpc serve` can be told, as the sections the parts take (see the module docstring)."""

    server: ServerSettings
    checkpoint: CheckpointSettings
    engine: EngineSettings
    pool: PoolSettings
    limits: RequestLimits
    telemetry: TelemetrySettings
    security: SecuritySettings
    media: MediaSettings

    def __init__(self, **values: Any) -> None:
        """Sections by name (`engine=EngineSettings(...)`), settings by their flat names (`max_batch_size=4`), or
        both (a flat name then overrides its section's value); the rest default. Does not validate."""
        given: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        for name, value in values.items():
            if name in SECTION_OF:
                given[SECTION_OF[name]][name] = value
            elif name not in SECTIONS:
                raise TypeError(f"Settings got an unknown setting {name!r}")
        for section, kind in SECTIONS.items():
            base = values.get(section) or kind()
            if not isinstance(base, kind):
                raise TypeError(f"Settings section {section} must be a {kind.__name__}, got {type(base).__name__}")
            object.__setattr__(self, section, replace(base, **given[section]))

    def __getattr__(self, name: str) -> Any:
        """A setting by its flat name (`settings.port` is `settings.server.port`)."""
        section = SECTION_OF.get(name)
        if section is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(getattr(self, section), name)

    @classmethod
    def from_sources(
        cls,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        config_file: str | Path | None = None,
    ) -> Settings:
        """Merge file, aliases, `AUTOGLM_*` and flags (None values in `flags` mean "not given"); validate."""
        return cls.from_values(given_values(flags, environ, config_file))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from flat names to values, typed or as the environment spells them (see `given_values`)."""
        settings = cls(**{name: _coerce(name, value) for name, value in values.items()})
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        check_listeners(self)
        _validate_server(self.server)
        _validate_checkpoint(self.checkpoint)
        _validate_engine(self.engine)
        _validate_pool(self.pool)
        _validate_limits(self.limits)
        _validate_telemetry(self.telemetry)
        _validate_security(self.security)
        _validate_media(self.media)


def given_values(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> dict[str, Any]:
    """The settings some source gives, by flat name, before conversion: the file, then the aliases, `AUTOGLM_*`
    and the flags, each over the one before (None values in `flags` mean "not given")."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = config_file or environ.get("AUTOGLM_CONFIG")
    if config_file:
        values.update(_read_file(Path(config_file)))
    for alias, name in ALIASES.items():
        if alias in environ:
            values[name] = environ[alias]
    for name in SECTION_OF:
        env_name = f"AUTOGLM_{name.upper()}"
        if env_name in environ:
            values[name] = environ[env_name]
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    return values


def setting_names() -> list[str]:
    """Every setting's flat name (TOML key, `AUTOGLM_<NAME>` suffix, flag with dashes), section by section."""
    return list(SECTION_OF)


def _validate_server(server: ServerSettings) -> None:
    for name in ("port", "http_port"):
        _check_port(name, getattr(server, name))
    _check_at_least_1(server, "max_message_bytes", "max_health_watchers", "max_http_connections")
    _check_at_least_1(server, "max_http_headers")
    if server.max_http_header_bytes < 1024:
        raise ValueError(f"max_http_header_bytes must be at least 1024, got {server.max_http_header_bytes}")
    for name in ("http_header_timeout", "http_body_timeout", "http_keep_alive_timeout"):
        if not getattr(server, name) > 0:
            raise ValueError(f"{name} must be positive (seconds), got {getattr(server, name)}")


def _validate_checkpoint(checkpoint: CheckpointSettings) -> None:
    _check_at_least_1(checkpoint, "default_max_new_tokens", "max_seq_len", "max_prompt_chars")
    names = checkpoint.served_model_name
    for name in (*names, *([checkpoint.model_id] if checkpoint.model_id is not None else [])):
        if not 0 < len(name) <= MAX_MODEL_NAME_CHARS or name != name.strip():
            raise ValueError(
                f"served_model_name / model_id: {name!r} must have 1 to {MAX_MODEL_NAME_CHARS} characters and no "
                "surrounding spaces"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"served_model_name lists a name twice: {', '.join(names)}")
    if names and checkpoint.model_id is not None and checkpoint.model_id != names[0]:
        raise ValueError(
            f"model_id {checkpoint.model_id!r} and served_model_name {', '.join(names)} disagree: model_id is a "
            "synonym for a single served_model_name; set one of them"
        )


def _validate_engine(engine: EngineSettings) -> None:
    _check_choice("device", engine.device, DEVICES)
    _check_choice("dtype", engine.dtype, DTYPES)
    _check_choice("quantization", engine.quantization, QUANTIZATIONS)
    _check_choice("decode_mode", engine.decode_mode, DECODE_MODES)
    if not 0 < engine.kv_cache_memory_fraction <= 1:
        raise ValueError(f"kv_cache_memory_fraction must be in (0, 1], got {engine.kv_cache_memory_fraction}")
    _check_at_least_1(engine, "max_batch_size", "max_num_batched_tokens", "workers", "worker_threads")
    _check_at_least_1(engine, "kv_cache_tokens")
    if not 1 <= engine.kv_block_size <= 1024:
        raise ValueError(f"kv_block_size must be in 1..1024, got {engine.kv_block_size}")
    size = engine.tensor_parallel_size
    if size < 1:
        raise ValueError(f"tensor_parallel_size must be at least 1, got {size}")
    if engine.workers is not None and engine.workers % size:
        raise ValueError(
            f"workers ({engine.workers}) must be a multiple of tensor_parallel_size ({size}): each replica of "
            f"the model is {size} worker processes"
        )
    if not engine.collective_timeout > 0:
        raise ValueError(f"collective_timeout must be positive, got {engine.collective_timeout}")
    if engine.max_num_batched_tokens < engine.max_batch_size:
        raise ValueError(
            f"max_num_batched_tokens ({engine.max_num_batched_tokens}) must be at least max_batch_size "
            f"({engine.max_batch_size}): every running request decodes one token per step"
        )


def _validate_pool(pool: PoolSettings) -> None:
    if pool.max_queue_depth < 0:
        raise ValueError(f"max_queue_depth must be 0 or more, got {pool.max_queue_depth}")
    if pool.worker_start_timeout <= 0 or pool.grace_period < 0:
        raise ValueError("worker_start_timeout must be positive and grace_period not negative")
    for name in ("restart_backoff_initial", "restart_backoff_max", "restart_window"):
        if not getattr(pool, name) > 0:
            raise ValueError(f"{name} must be positive, got {getattr(pool, name)}")
    if pool.restart_backoff_max < pool.restart_backoff_initial:
        raise ValueError(
            f"restart_backoff_max ({pool.restart_backoff_max}) must be at least restart_backoff_initial "
            f"({pool.restart_backoff_initial})"
        )
    if pool.max_restarts_per_window < 0:
        raise ValueError(f"max_restarts_per_window must be 0 or more, got {pool.max_restarts_per_window}")
    _check_at_least_1(pool, "stream_buffer_messages")
    if pool.worker_hang_timeout is not None and not pool.worker_hang_timeout >= 0:
        raise ValueError(
            f"worker_hang_timeout must be 0 (off) or more, or unset (derived), got {pool.worker_hang_timeout}"
        )


def _validate_limits(limits: RequestLimits) -> None:
    for name in ("max_stop_sequences", "max_stop_sequence_chars", "max_top_logprobs"):
        if getattr(limits, name) < 0:
            raise ValueError(f"{name} must be 0 or more, got {getattr(limits, name)}")


def _validate_telemetry(telemetry: TelemetrySettings) -> None:
    _check_choice("log_level", telemetry.log_level, LOG_LEVELS)
    _check_choice("log_format", telemetry.log_format, LOG_FORMATS)
    _check_choice("kernel_capture", telemetry.kernel_capture, KERNEL_CAPTURE)
    if telemetry.otlp_protocol is not None:
        _check_choice("otlp_protocol", telemetry.otlp_protocol, OTLP_PROTOCOLS)
    if telemetry.metrics_port is not None:
        _check_port("metrics_port", telemetry.metrics_port)
    for name in ("trace_sample_ratio", "trace_step_sample_ratio"):
        value = getattr(telemetry, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if telemetry.kernel_capture_interval < 0:
        raise ValueError(f"kernel_capture_interval must be 0 or more, got {telemetry.kernel_capture_interval}")
    if not 0 <= telemetry.kernel_capture_top_k <= 1000:
        raise ValueError(f"kernel_capture_top_k must be in 0..1000, got {telemetry.kernel_capture_top_k}")


def _validate_security(security: SecuritySettings) -> None:
    if (security.tls_cert is None) != (security.tls_key is None):
        raise ValueError("tls_cert and tls_key go together: set both, or neither")
    if security.tls_client_ca is not None and security.tls_cert is None:
        raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
    for name in ("rate_limit_requests_per_minute", "rate_limit_tokens_per_minute"):
        if getattr(security, name) < 0:
            raise ValueError(f"{name} must be 0 (off) or more, got {getattr(security, name)}")


def _validate_media(media: MediaSettings) -> None:
    _check_at_least_1(media, "max_images_per_prompt", "max_image_bytes", "max_image_pixels")
    _check_choice("chat_template_content_format", media.chat_template_content_format, CONTENT_FORMATS)
    if not media.remote_media_timeout > 0:
        raise ValueError(f"remote_media_timeout must be positive, got {media.remote_media_timeout}")


def _read_file(path: Path) -> dict[str, Any]:
    """The file's settings, flat; a table named after a section (`[engine]`) holds that section's settings."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"config file {path}: {exc}") from exc
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            values.update(value)
            unknown += [f"{key}.{name}" for name in value if SECTION_OF.get(name) != key]
        elif key in SECTION_OF:
            values[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"config file {path}: unknown settings {', '.join(sorted(unknown))}")
    return values


def _coerce(name: str, value: Any) -> Any:
    """Turn a string from the environment into the field's type; typed values pass through."""
    if name not in SECTION_OF:
        raise ValueError(f"unknown setting {name!r}")
    kind = SECTIONS[SECTION_OF[name]].__dataclass_fields__[name].type
    if kind == "tuple[str, ...]":  # a TOML list, the flag's values, or one comma-separated string
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
            raise ValueError(f"{name} must be a list of strings (or one comma-separated string), got {value!r}")
        return tuple(item.strip() for item in items if item.strip())
    if not isinstance(value, str):
        return value
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
    if name in (
        "dtype", "quantization", "log_format", "kernel_capture", "otlp_protocol", "decode_mode",
        "chat_template_content_format",
    ):  # fmt: skip
        text = text.lower()
    if name == "log_level":
        return text.upper()
    return text or None if "None" in kind else text


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_port(name: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{name} must be in 0..65535, got {value}")


def _check_at_least_1(section: object, *names: str) -> None:
    """Each named setting of `section` is at least 1 (or None, where None means "default")."""
    for name in names:
        value = getattr(section, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
