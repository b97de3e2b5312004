"""Span names and attribute keys the gateway emits, pinned to OpenTelemetry semantic conventions v1.37.0.

The `gen_ai.*` conventions are still "Development" and change between versions, so we keep our own constants
instead of importing `opentelemetry.semconv._incubating`. Our own attributes use the one prefix `autoglm.`. The
workers' keys live in `workers.telemetry.names` (the two sides may not import each other); a unit test keeps the
shared ones equal.
"""

from __future__ import annotations

SEMCONV_VERSION = "1.37.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

# Span names. The RPC span is named after the full method, "/autoglm.v1.GenerationService/GenerateStream".
GENERATE = "generate"  # "generate <model>"
ROUTE = "route"
PIPE_SEND = "pipe.send"  # "pipe.send worker-<i>"

# RPC conventions (v1.37.0).
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"
NETWORK_PEER_ADDRESS = "network.peer.address"
ERROR_TYPE = "error.type"

# HTTP conventions (v1.37.0), for the OpenAI-compatible API. Its server span is named "<method> <route>".
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
URL_PATH = "url.path"
URL_SCHEME = "url.scheme"

# GenAI conventions (v1.37.0).
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K = "gen_ai.request.top_k"
GEN_AI_REQUEST_FREQUENCY_PENALTY = "gen_ai.request.frequency_penalty"
GEN_AI_REQUEST_PRESENCE_PENALTY = "gen_ai.request.presence_penalty"
GEN_AI_REQUEST_SEED = "gen_ai.request.seed"
GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
OPERATION_CHAT = "chat"
OPERATION_TEXT_COMPLETION = "text_completion"
PROVIDER = "autoglm"

# Ours.
REQUEST_ID = "autoglm.request_id"
WORKER_ID = "autoglm.worker.id"
ERROR_REASON = "autoglm.error.reason"
TIME_TO_FIRST_TOKEN = "autoglm.time_to_first_token_ms"
QUEUE_TIME = "autoglm.queue_time_ms"
ROUTE_CANDIDATES = "autoglm.route.ready_workers"
ROUTE_IN_FLIGHT = "autoglm.route.worker_in_flight"
KERNEL_CAPTURE = "autoglm.kernel_capture"

# Span events.
EVENT_FIRST_TOKEN = "first_token"
EVENT_CANCELLED = "cancelled"

# Request metadata that asks for kernel capture: `x-autoglm-profile: kernels`.
PROFILE_METADATA_KEY = "x-autoglm-profile"
PROFILE_KERNELS = "kernels"
