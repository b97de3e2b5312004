"""The sections of `Settings`: one frozen dataclass per part of the service, taken by that part as it is.

A field's name is the setting's name everywhere the user spells it (TOML key, `AUTOGLM_<NAME>`, `--flag`), so
every name is unique across the sections (`config.SECTION_OF` maps it to its section). The request limits
section is `requests.RequestLimits` itself. Values are checked once, in `config.Settings.validate()`; nothing
here validates. Adding a setting to a part: a field in its section, a flag in `cli.py`, a check in `config.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

OTLP_PROTOCOLS = ("grpc", "http/protobuf")  # TelemetrySettings.otlp_protocol (the telemetry checks it too)
CONTENT_FORMATS = ("auto", "string", "openai")  # MediaSettings.chat_template_content_format


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The gRPC and HTTP listeners (`server.build_app`, `openai_api.build_http_server`)."""

    host: str = "127.0.0.1"
    port: int = 50051
    http: bool = True  # serve the OpenAI-compatible HTTP API beside gRPC (--no-http: off)
    http_host: str | None = None  # default: host
    http_port: int = 8000  # 0 picks a free port (logged)
    max_message_bytes: int = 16 * 1024 * 1024  # largest gRPC message either way and HTTP body (16 MiB)
    reflection: bool = True  # gRPC server reflection: grpcurl and other tools need no proto files
    max_health_watchers: int = 100  # open Health/Watch streams (open without a key); more get RESOURCE_EXHAUSTED
    # HTTP connections (see openai_api/connections.py). Open at once; more get a 503. At most half the process's
    # open-file limit (raised to its hard limit at start), so that gRPC always has descriptors left.
    max_http_connections: int = 1000
    http_header_timeout: float = 10.0  # seconds for a request's line and headers to arrive; then 408
    http_body_timeout: float = 60.0  # seconds for the whole body to arrive after the headers; then 408
    http_keep_alive_timeout: float = 5.0  # seconds an idle kept-alive connection stays open
    max_http_header_bytes: int = 64 * 1024  # request line and headers together; more is a 431
    max_http_headers: int = 100  # header lines; more is a 431


@dataclass(frozen=True, slots=True)
class CheckpointSettings:
    """Which checkpoint is served and how it may be loaded (`server.load_served_model`, the workers' loader)."""

    model: str | None = None  # checkpoint directory, or a hub id already in the local cache
    # The names the model answers to as `model`, the first shown as its id (in /v1/models, ListModels and
    # responses); default: (model_id,), else the checkpoint directory's name. model_id is a synonym for one name.
    served_model_name: tuple[str, ...] = ()
    model_id: str | None = None
    max_seq_len: int | None = None  # context limit; default: the checkpoint's
    default_max_new_tokens: int = 256  # when neither the request nor generation_config sets one
    max_prompt_chars: int | None = None  # text of one prompt or chat; default: 16 per token of the context
    trust_remote_code: bool = False
    allow_download: bool = False
    weights_manifest: str | None = None  # `sha256sum`-format file every checkpoint file must match
    allow_pickle_weights: bool = False  # let .bin/.pt weights (pickle: can run code) load when no safetensors


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The workers and their engines (`devices.plan_workers` maps it onto each `WorkerConfig` by field name)."""

    workers: int | None = None  # default: one per visible GPU with device cuda, else tensor_parallel_size
    # Ranks one replica of the model is split across (tensor parallelism); workers / tensor_parallel_size replicas.
    tensor_parallel_size: int = 1
    collective_timeout: float = 60.0  # seconds a rank waits in an all-reduce before its replica is declared broken
    device: str = "auto"
    dtype: str = "auto"
    quantization: str = "none"
    worker_threads: int | None = None  # torch threads per CPU worker
    max_batch_size: int = 32  # running requests per worker
    max_num_batched_tokens: int = 512  # per-step token budget of chunked prefill
    kv_cache_memory_fraction: float = 0.9  # share of the memory free after the weights load for the KV cache
    kv_cache_tokens: int | None = None  # exact KV-cache size in tokens per worker (instead of the fraction)
    kv_block_size: int = 16  # tokens per KV-cache block (see docs/kv-cache.md)
    enable_prefix_caching: bool = True  # reuse the KV blocks of prompt prefixes already computed
    decode_mode: str = "auto"  # eager | static | cuda_graphs; auto: cuda_graphs on GPU, eager on CPU


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Admission, supervision and draining of the workers (`pool.WorkerPool`, `server.App`).

    A dead worker restarts after a backoff that doubles from restart_backoff_initial up to restart_backoff_max;
    more than max_restarts_per_window deaths within restart_window seconds is a crash loop, and the worker is not
    restarted again (0: never restart); see `pool/supervisor.py`.
    """

    max_queue_depth: int = 256  # requests waiting beyond the running batches before QUEUE_FULL
    worker_start_timeout: float = 600.0  # seconds the server waits at start for workers to load and warm up
    grace_period: float = 10.0  # seconds in-flight requests get on shutdown (the drain after SIGTERM)
    restart_backoff_initial: float = 1.0
    restart_backoff_max: float = 30.0
    max_restarts_per_window: int = 5
    restart_window: float = 300.0
    # A ready worker silent this long (no engine step, no answer to a liveness ping) is hung: killed and restarted.
    # None (the default) derives it per worker: max(30 s, 10 x its longest engine step), see pool/watchdog.py;
    # seconds override that for every worker; 0 turns the watchdog off.
    worker_hang_timeout: float | None = None
    # Worker messages a stream that is not being read may hold; past it new tokens merge into the last one.
    stream_buffer_messages: int = 64


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """Logs, metrics and traces (`telemetry.Telemetry`; see docs/observability.md).

    Tracing is on only when an OTLP endpoint is configured here or through OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT,
    and OTEL_SDK_DISABLED=true turns it off.
    """

    log_level: str = "INFO"
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


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """TLS (mutual when tls_client_ca is set), API keys and per-key rate limits (`security.Security`)."""

    tls_cert: str | None = None  # PEM certificate chain of the server
    tls_key: str | None = None  # PEM private key of the server
    tls_client_ca: str | None = None  # PEM CA bundle: clients must present a certificate it signed
    api_keys_file: str | None = None  # lines of `sha256:<hex>  <name>`; when set (or api_keys), calls need a key
    api_keys: str | None = None  # the same lines inline (newline- or comma-separated), e.g. from a secret
    rate_limit_requests_per_minute: int = 0  # per key (or for all callers when no keys are set); 0 = off
    rate_limit_tokens_per_minute: int = 0  # prompt + max_new_tokens reserved per key, unused part refunded
    high_priority_owners: str | None = None  # comma-separated key owners that may send PRIORITY_HIGH (with keys)


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """Images in chat prompts (`media.ImageIntake`; see docs/openai-api.md, "Images").

    An image comes inline (a `data:` URL over HTTP, the file's bytes over gRPC) or, over HTTP, as a `file://` URL
    under allowed_local_media_path (unset: no local files), or as an http(s) URL where allow_remote_media is on.
    """

    max_images_per_prompt: int = 10  # images in one chat, all messages together; more get TOO_MANY_IMAGES
    max_image_bytes: int = 10 * 1024 * 1024  # the encoded file of one image (10 MiB)
    max_image_pixels: int = 4096 * 4096  # width * height of one image, checked from its header before decoding
    allowed_local_media_path: str | None = None  # file:// images must lie under this directory
    # Fetch http(s) image URLs (off: the server would reach any address it can, on a caller's word).
    allow_remote_media: bool = False
    remote_media_timeout: float = 10.0  # seconds for one whole fetch
    # How the chat template takes a message with images: "openai" (content as a list of parts), "string" (the
    # parts flattened into one string with an image placeholder), or "auto" (read from the template).
    chat_template_content_format: str = "auto"
