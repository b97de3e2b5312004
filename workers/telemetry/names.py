"""Span names and attribute keys the workers emit. Our own attributes use the one prefix `autoglm.`.

The `gen_ai.*` keys follow the OpenTelemetry semantic conventions v1.37.0 (GenAI is still "Development" there),
the same version as the gateway's `autoglm_rpc.telemetry.semconv`; a unit test keeps the two in step (the two
sides may not import each other).
"""

from __future__ import annotations

SEMCONV_VERSION = "1.37.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

# Span names (see docs/observability.md).
REQUEST = "request"
QUEUE = "queue"
PREFILL = "prefill"
DECODE = "decode"
ENGINE_STEP = "engine.step"
SCHEDULE = "schedule"
FORWARD = "forward"
EMIT = "emit"
KERNELS = "kernels"

# OpenTelemetry GenAI conventions.
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"

# Ours.
REQUEST_ID = "autoglm.request_id"
WORKER_ID = "autoglm.worker.id"  # the replica: the gateway's worker index (a split replica is one worker)
RANK = "autoglm.rank"  # which rank of the replica's split this process is; only rank 0 traces
TENSOR_PARALLEL_SIZE = "autoglm.tensor_parallel_size"  # how many ranks the replica's model is split across
ERROR_REASON = "autoglm.error.reason"
DECODE_TIME_PER_TOKEN = "autoglm.decode.time_per_output_token_ms"
STEP_BATCH_SIZE = "autoglm.step.batch_size"
STEP_DECODE_TOKENS = "autoglm.step.decode_tokens"
STEP_PREFILL_TOKENS = "autoglm.step.prefill_tokens"
STEP_RETIRED = "autoglm.step.retired_requests"
STEP_RUNNING = "autoglm.step.running_requests"
STEP_WAITING = "autoglm.step.waiting_requests"
STEP_GPU_TIME = "autoglm.step.gpu_time_ms"
KV_CACHE_USAGE = "autoglm.kv_cache.usage_ratio"
KERNELS_DEVICE = "autoglm.kernels.device"
KERNELS_COUNT = "autoglm.kernels.count"
KERNELS_BUSY = "autoglm.kernels.busy_time_ms"
KERNELS_TOP = "autoglm.kernels.top"
KERNELS_LAUNCH_P50 = "autoglm.kernels.launch_to_start_p50_us"
KERNELS_LAUNCH_P99 = "autoglm.kernels.launch_to_start_p99_us"
KERNELS_GRAPH_LAUNCHES = "autoglm.kernels.graph_launches"
KERNEL_DURATION = "autoglm.kernel.duration_us"
KERNEL_LAUNCH_LATENCY = "autoglm.kernel.launch_to_start_us"
