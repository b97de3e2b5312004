from autoglm.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATE_UNSPECIFIED: _ClassVar[WorkerState]
    WORKER_STATE_STARTING: _ClassVar[WorkerState]
    WORKER_STATE_READY: _ClassVar[WorkerState]
    WORKER_STATE_RESTARTING: _ClassVar[WorkerState]
    WORKER_STATE_CRASH_LOOP: _ClassVar[WorkerState]
    WORKER_STATE_STOPPED: _ClassVar[WorkerState]
    WORKER_STATE_HUNG: _ClassVar[WorkerState]
WORKER_STATE_UNSPECIFIED: WorkerState
WORKER_STATE_STARTING: WorkerState
WORKER_STATE_READY: WorkerState
WORKER_STATE_RESTARTING: WorkerState
WORKER_STATE_CRASH_LOOP: WorkerState
WORKER_STATE_STOPPED: WorkerState
WORKER_STATE_HUNG: WorkerState

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("id", "source", "architecture", "dtype", "quantization", "max_context_tokens", "has_chat_template", "defaults", "ready_workers", "total_workers", "aliases")
    ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HAS_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    READY_WORKERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WORKERS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    id: str
    source: str
    architecture: str
    dtype: str
    quantization: str
    max_context_tokens: int
    has_chat_template: bool
    defaults: _types_pb2.SamplingOptions
    ready_workers: int
    total_workers: int
    aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., source: _Optional[str] = ..., architecture: _Optional[str] = ..., dtype: _Optional[str] = ..., quantization: _Optional[str] = ..., max_context_tokens: _Optional[int] = ..., has_chat_template: _Optional[bool] = ..., defaults: _Optional[_Union[_types_pb2.SamplingOptions, _Mapping]] = ..., ready_workers: _Optional[int] = ..., total_workers: _Optional[int] = ..., aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("server_version", "api_version", "default_model", "ready_workers", "total_workers", "max_queue_depth", "reflection_enabled", "workers", "draining", "prefix_caching_enabled", "cached_prompt_tokens", "worker_hang_timeout_seconds", "tensor_parallel_size")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    READY_WORKERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    REFLECTION_ENABLED_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHING_ENABLED_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WORKER_HANG_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TENSOR_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    api_version: str
    default_model: str
    ready_workers: int
    total_workers: int
    max_queue_depth: int
    reflection_enabled: bool
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    draining: bool
    prefix_caching_enabled: bool
    cached_prompt_tokens: int
    worker_hang_timeout_seconds: float
    tensor_parallel_size: int
    def __init__(self, server_version: _Optional[str] = ..., api_version: _Optional[str] = ..., default_model: _Optional[str] = ..., ready_workers: _Optional[int] = ..., total_workers: _Optional[int] = ..., max_queue_depth: _Optional[int] = ..., reflection_enabled: _Optional[bool] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., draining: _Optional[bool] = ..., prefix_caching_enabled: _Optional[bool] = ..., cached_prompt_tokens: _Optional[int] = ..., worker_hang_timeout_seconds: _Optional[float] = ..., tensor_parallel_size: _Optional[int] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "state", "pid", "restarts", "in_flight_requests", "last_exit", "device", "kv_cache_blocks_total", "kv_cache_blocks_used", "kv_cache_block_size", "prefix_cache_hit_rate", "hangs", "seconds_since_heard", "tensor_parallel_size", "ranks")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    HANGS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_HEARD_FIELD_NUMBER: _ClassVar[int]
    TENSOR_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    state: WorkerState
    pid: int
    restarts: int
    in_flight_requests: int
    last_exit: str
    device: str
    kv_cache_blocks_total: int
    kv_cache_blocks_used: int
    kv_cache_block_size: int
    prefix_cache_hit_rate: float
    hangs: int
    seconds_since_heard: float
    tensor_parallel_size: int
    ranks: _containers.RepeatedCompositeFieldContainer[RankInfo]
    def __init__(self, worker_id: _Optional[int] = ..., state: _Optional[_Union[WorkerState, str]] = ..., pid: _Optional[int] = ..., restarts: _Optional[int] = ..., in_flight_requests: _Optional[int] = ..., last_exit: _Optional[str] = ..., device: _Optional[str] = ..., kv_cache_blocks_total: _Optional[int] = ..., kv_cache_blocks_used: _Optional[int] = ..., kv_cache_block_size: _Optional[int] = ..., prefix_cache_hit_rate: _Optional[float] = ..., hangs: _Optional[int] = ..., seconds_since_heard: _Optional[float] = ..., tensor_parallel_size: _Optional[int] = ..., ranks: _Optional[_Iterable[_Union[RankInfo, _Mapping]]] = ...) -> None: ...

class RankInfo(_message.Message):
    __slots__ = ("rank", "pid", "device", "weight_bytes", "sharded_weight_bytes", "state")
    RANK_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARDED_WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    rank: int
    pid: int
    device: str
    weight_bytes: int
    sharded_weight_bytes: int
    state: WorkerState
    def __init__(self, rank: _Optional[int] = ..., pid: _Optional[int] = ..., device: _Optional[str] = ..., weight_bytes: _Optional[int] = ..., sharded_weight_bytes: _Optional[int] = ..., state: _Optional[_Union[WorkerState, str]] = ...) -> None: ...
