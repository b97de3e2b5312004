"""The typed messages that cross the pipe between the gateway and a worker process.

This is the only module both sides import, so it uses the standard library alone: the gateway must not pull in
torch and the workers must not pull in grpc. Messages carry token ids only, never text. A worker sends one
`StepOutput` per engine step with the new tokens of every running request, never one message per token.

Gateway -> worker: `Submit`, `Cancel`, `Shutdown`, `Ping`, `Withdraw`.
Worker -> gateway: `LoadProgress`, `Ready`, `StepOutput`, `RequestFailed`, `WorkerFailed`, `Pong`, `Withdrawn`.

Times are `time.monotonic()` seconds. On Linux that clock (CLOCK_MONOTONIC) is shared by every process on the
machine, so an absolute deadline computed in the gateway is meaningful in a worker.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field
from typing import TypeVar

# A file in every checkpoint that `workers.model.checkpoints` builds (random weights), so the gateway can warn that
# the text it serves is noise.
RANDOM_WEIGHTS_MARKER = "autoglm_demo.json"


_Message = TypeVar("_Message", bound=type)


def _pickled_by_position(cls: _Message) -> _Message:
    """Pickle `cls` (a dataclass of two or more fields) as its constructor's arguments.

    A frozen, slotted dataclass otherwise unpickles through `dataclasses`' generic `__setstate__`, which costs
    about twice as much; these messages cross the pipe once per request per engine step.
    """
    fields = operator.attrgetter(*cls.__match_args__)

    def reduce(self: object) -> tuple[type, tuple[object, ...]]:
        return cls, fields(self)

    cls.__reduce__ = reduce  # type: ignore[assignment]
    return cls


class FinishReason(enum.Enum):
    """Why a request stopped producing tokens (mirrors `autoglm.v1.FinishReason`)."""

    EOS_TOKEN = "eos_token"
    STOP_SEQUENCE = "stop_sequence"
    MAX_NEW_TOKENS = "max_new_tokens"
    CONTEXT_LIMIT = "context_limit"
    TIME_LIMIT = "time_limit"
    CANCELLED = "cancelled"


class Priority(enum.IntEnum):
    """Scheduling priority; a higher value is admitted first (mirrors `autoglm.v1.Priority`)."""

    LOW = 1
    NORMAL = 2
    HIGH = 3


# How a worker runs decode; see WorkerConfig.decode_mode.
DECODE_MODES = ("auto", "eager", "static", "cuda_graphs")


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """How a worker logs and traces; resolved by the gateway from its settings and the OTEL_* environment.

    otlp_endpoint: the full OTLP traces endpoint (for http/protobuf including `/v1/traces`); None turns tracing
    off in the worker. step_sample_ratio: the fraction of engine steps traced. kernel_capture: "off", "request"
    (steps serving a request that asked for it) or "always"; at most one profiled step per
    `kernel_capture_interval` seconds, with spans for its `kernel_capture_top_k` longest kernels.
    """

    log_format: str = "text"
    otlp_endpoint: str | None = None
    otlp_protocol: str = "grpc"
    step_sample_ratio: float = 0.01
    kernel_capture: str = "request"
    kernel_capture_interval: float = 10.0
    kernel_capture_top_k: int = 0


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a worker process needs to start; built by the gateway, validated there, sent at spawn.

    cuda_visible_devices: set in the child before torch is imported (one GPU per worker); None leaves it alone.
    max_seq_len: the context limit in tokens (prompt + output); None means the checkpoint's own limit.
    max_num_batched_tokens: the per-step token budget that chunked prefill works within.
    kv_cache_memory_fraction: the share of the memory free after the weights load that the KV cache may take.
    kv_cache_tokens: when set, the KV cache holds exactly this many tokens (rounded up to whole blocks) instead.
    kv_block_size: tokens per KV-cache block (the paged cache's unit of allocation and of prefix reuse).
    enable_prefix_caching: reuse the cached KV blocks of a prompt prefix another request already computed.
    decode_mode: "eager" runs decode at each step's exact shape; "static" at bucketed shapes (rows = cache
        slots); "cuda_graphs" replays those buckets as CUDA graphs; "auto" is cuda_graphs on CUDA, else eager.
    tensor_parallel_size: the ranks one replica of the model is split across; this worker is rank 0 and starts
        the others (with CUDA, `cuda_visible_devices` then lists one GPU per rank, rank k on the k-th).
    collective_timeout: seconds a rank waits in a collective (all-reduce) before its replica is declared broken.
    """

    worker_id: int
    model_path: str
    model_id: str
    device: str = "cpu"
    dtype: str = "auto"
    quantization: str = "none"
    max_batch_size: int = 16
    max_seq_len: int | None = None
    max_num_batched_tokens: int = 512
    kv_cache_memory_fraction: float = 0.9
    kv_cache_tokens: int | None = None
    kv_block_size: int = 16
    enable_prefix_caching: bool = True
    decode_mode: str = "auto"
    trust_remote_code: bool = False
    allow_download: bool = False
    num_threads: int | None = None
    cuda_visible_devices: str | None = None
    log_level: str = "INFO"
    weights_manifest: str | None = None  # sha256sum-format file every checkpoint file must match before loading
    allow_pickle_weights: bool = False  # load .bin/.pt weights (pickle) when the checkpoint has no safetensors
    tensor_parallel_size: int = 1
    collective_timeout: float = 60.0
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)


# ---------------------------------------------------------------------------------------------------------------
# Gateway -> worker
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Resolved sampling settings: every field has its final value (defaults already applied by the gateway).

    temperature: 0 means greedy (argmax); top_p: 1.0 disables; top_k: 0 disables; repetition_penalty: 1.0
    disables (transformers' multiplicative penalty on every token of the prompt and the output).
    frequency_penalty, presence_penalty: OpenAI's additive penalties, each in [-2, 2], 0 disables: a token's logit
    loses frequency_penalty * (times it was generated) + presence_penalty * (whether it was generated), counting
    generated tokens only. seed: always set; the same seed with the same prompt gives the same tokens.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        # Invariants, not request validation: the edges refuse bad values with the field's name as the caller
        # spells it; a message that breaks these is a gateway bug, stopped here before it reaches an engine step.
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError(f"sampling parameters out of range: {self}")
        if not -2 <= self.frequency_penalty <= 2 or not -2 <= self.presence_penalty <= 2:
            raise ValueError(f"sampling parameters out of range: {self}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_output_penalty(self) -> bool:
        """Whether sampling needs the counts of the tokens generated so far (frequency or presence penalty)."""
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


@dataclass(frozen=True, slots=True)
class StoppingParams:
    """Token-level stop conditions, checked by the worker after every sampled token.

    Stop *sequences* (text) are the gateway's job: they need decoded text. `eos_token_ids` are the checkpoint's;
    `stop_token_ids` are the caller's. Neither ends a request before `min_new_tokens` tokens exist (they are
    masked out of sampling until then), and `ignore_eos` disables `eos_token_ids` only.
    """

    max_new_tokens: int
    min_new_tokens: int = 0
    eos_token_ids: tuple[int, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    max_generation_time: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.min_new_tokens <= self.max_new_tokens or self.max_new_tokens < 1:
            raise ValueError(f"token limits out of range: {self}")


@dataclass(frozen=True, slots=True)
class ImageInput:
    """One image of a prompt, as the client sent it: the encoded file (PNG, JPEG or WebP), decoded and
    preprocessed by the worker, so what crosses the pipe is the file's bytes, never float patches; and what the
    gateway derived from its header. Its `num_tokens` image tokens stand in `Submit.prompt_ids` as one run of the
    model's image token per image, in the order of `Submit.images`; `content_hash` (the SHA-256 hex of `data`)
    goes into the prefix-cache key of every block holding them, so two prompts that differ only in an image never
    share those blocks."""

    data: bytes
    media_type: str
    num_tokens: int
    content_hash: str

    def __post_init__(self) -> None:
        if not self.data or self.num_tokens < 1 or len(self.content_hash) != 64:
            raise ValueError("an image needs its bytes, at least one token and a SHA-256 hex content hash")


class ConstraintKind(enum.Enum):
    """What a `Constraint`'s `spec` is."""

    JSON_SCHEMA = "json_schema"  # spec: a JSON Schema, as JSON text
    JSON_OBJECT = "json_object"  # spec: "" (any JSON object)
    REGEX = "regex"  # spec: a regular expression the whole output matches
    CHOICE = "choice"  # spec: a JSON array of strings, the output being exactly one of them
    GRAMMAR = "grammar"  # spec: a context-free grammar in Lark syntax (or llama.cpp's GBNF)


@dataclass(frozen=True, slots=True)
class Constraint:
    """The language a request's output must belong to (constrained decoding). The gateway checked at its edge
    that `spec` compiles; the worker compiles it against its tokenizer (cached by the pair) and masks, at every
    step, the tokens that would leave the language; end-of-sequence is allowed only where the language may end."""

    kind: ConstraintKind
    spec: str = ""

    def __post_init__(self) -> None:
        if (self.kind is ConstraintKind.JSON_OBJECT) != (not self.spec):
            raise ValueError(f"a {self.kind.value} constraint {'has no' if self.spec else 'needs a'} spec")


@dataclass(frozen=True, slots=True)
class Submit:
    """Start generating for one request. `prompt_ids` is never empty (checked here); whether it fits the
    worker's context and vocabulary is the worker's check, since only the worker knows its cache and model."""

    request_id: str
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    stopping: StoppingParams
    return_logprobs: bool = False
    top_logprobs: int = 0
    priority: Priority = Priority.NORMAL
    deadline: float | None = None
    trace_carrier: dict[str, str] = field(default_factory=dict)
    capture_kernels: bool = False  # profile a step that serves this request (x-autoglm-profile: kernels)
    images: tuple[ImageInput, ...] = ()  # in prompt order; their tokens are in prompt_ids (see ImageInput)
    constraint: Constraint | None = None  # the output's language (constrained decoding); None: free text

    def __post_init__(self) -> None:
        if not self.prompt_ids or self.top_logprobs < 0:
            raise ValueError(f"request {self.request_id!r}: an empty prompt or a negative top_logprobs")


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop these requests at the next step and free their memory. Unknown ids are ignored (idempotent)."""

    request_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Finish nothing more, release the model and exit."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness: the serving loop answers with `Pong` between two engine steps (for the gateway's watchdog)."""

    sequence: int


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Give back up to `count` requests the engine has not started: waiting, never admitted (a preempted request
    has started and stays), lowest priority and newest first. The worker answers `Withdrawn`, always."""

    count: int


# ---------------------------------------------------------------------------------------------------------------
# Worker -> gateway
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RankInfo:
    """One rank of a tensor-parallel replica: where it runs and the bytes of weights it holds.

    sharded_weight_bytes: the part of weight_bytes in split layers (about 1/N of the model's); the rest is
    replicated on every rank (embeddings, norms, LM head).
    """

    rank: int
    pid: int
    device: str
    weight_bytes: int
    sharded_weight_bytes: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Facts about the loaded model that the gateway reports and validates against.

    ranks: with tensor parallelism, every rank of the replica (rank 0 first); empty for a single process.
    """

    model_id: str
    source: str
    architecture: str
    dtype: str
    quantization: str
    device: str
    max_context_tokens: int
    max_batch_size: int
    vocab_size: int
    kv_cache_blocks: int = 0  # blocks requests may use (the scratch block not counted)
    kv_block_size: int = 0  # tokens per block
    prefix_caching: bool = False
    ranks: tuple[RankInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class LoadProgress:
    """Sent while a worker loads its model, so a long load shows progress. `fraction` is in [0, 1]."""

    worker_id: int
    stage: str
    fraction: float


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker has loaded its model and accepts `Submit`. `longest_step`: seconds of its longest engine step so
    far (the warm-up's), which the gateway's watchdog sizes its timeout from."""

    worker_id: int
    model: ModelInfo
    longest_step: float = 0.0


@_pickled_by_position
@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """Log-probability of a generated token under the model's distribution, and the most likely alternatives."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@_pickled_by_position
@dataclass(frozen=True, slots=True)
class Finish:
    """How a request ended, with the worker-side timings (seconds)."""

    reason: FinishReason
    stop_token_id: int | None = None
    queue_time: float = 0.0
    prefill_time: float = 0.0
    decode_time: float = 0.0


@_pickled_by_position
@dataclass(frozen=True, slots=True)
class RequestDelta:
    """New tokens of one request in one step; `finish` is set on the request's last delta."""

    request_id: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()
    finish: Finish | None = None


@_pickled_by_position
@dataclass(frozen=True, slots=True)
class StepOutput:
    """Everything one engine step produced, plus the worker's load after the step (the gateway's gauges).

    kv_cache_usage: the fraction of the KV cache's blocks that running requests hold, in [0, 1].
    kv_blocks_used, kv_blocks_free: the blocks held by running requests, and those free or evictable (cached
        blocks no request holds).
    Counters since the worker started: prompt_tokens (prompt tokens of admitted requests), cached_prompt_tokens
    (those found in the prefix cache and not prefilled), preemptions (requests preempted for lack of blocks).
    longest_step: seconds of the longest engine step the worker has run (this one included).
    """

    deltas: tuple[RequestDelta, ...]
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    kv_blocks_used: int = 0
    kv_blocks_free: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    preemptions: int = 0
    longest_step: float = 0.0


class FailureReason(enum.Enum):
    """Why a single request failed inside a worker (the engine itself is still healthy)."""

    INVALID_PARAMETER = "INVALID_PARAMETER"
    PROMPT_TOO_LONG = "PROMPT_TOO_LONG"
    GPU_OUT_OF_MEMORY = "GPU_OUT_OF_MEMORY"
    DUPLICATE_REQUEST_ID = "DUPLICATE_REQUEST_ID"
    INTERNAL_ERROR = "INTERNAL_ERROR"


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """One request failed; the worker keeps serving the others."""

    request_id: str
    reason: FailureReason
    message: str


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    """The worker cannot go on (the model failed to load, or the engine broke); it exits after sending this."""

    worker_id: int
    message: str
    # The failure came from loading (files, weights, shapes, settings, an unsupported model) and a restart would
    # fail the same way; an out-of-memory or device error while loading may not repeat and leaves this False.
    will_repeat: bool = False


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to `Ping`, sent by the serving loop (not a helper thread), so it shows that steps progress;
    `longest_step` as in `StepOutput`."""

    worker_id: int
    sequence: int
    longest_step: float = 0.0


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """The answer to `Withdraw`: the requests taken out of the engine, which the worker will say nothing more of
    (possibly none: every request had started)."""

    worker_id: int
    request_ids: tuple[str, ...]


GatewayMessage = Submit | Cancel | Shutdown | Ping | Withdraw
WorkerMessage = LoadProgress | Ready | StepOutput | RequestFailed | WorkerFailed | Pong | Withdrawn
