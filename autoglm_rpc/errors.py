"""The gateway's error taxonomy and its one map to gRPC status codes (docs/contract.md's table).

Code behind the servicers raises a `ServiceError` subclass; the servicer boundary turns it into the call's
status with a `google.rpc.ErrorInfo` detail (domain "autoglm", the reason) and, for QUEUE_FULL, a `RetryInfo`.
Anything else becomes INTERNAL / INTERNAL_ERROR: logged with the request id, never a stack trace to the client.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "autoglm"


@dataclass
class ServiceError(Exception):
    """A failure a caller should see: a status code, a stable reason and a message that names the problem."""

    message: str
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL_ERROR"
    retry_after: float | None = None

    def __str__(self) -> str:
        return self.message


class InvalidParameter(ServiceError):
    """A request field is missing, out of range or inconsistent; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER")
        self.field = field


class PromptTooLong(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.INVALID_ARGUMENT, "PROMPT_TOO_LONG")


class ModelNotFound(ServiceError):
    def __init__(self, model: str, served: str) -> None:
        super().__init__(
            f"model {model!r} is not served here; this server serves {served!r}",
            grpc.StatusCode.NOT_FOUND,
            "MODEL_NOT_FOUND",
        )


class ChatTemplateMissing(ServiceError):
    def __init__(self, model: str) -> None:
        super().__init__(
            f"chat: model {model!r} has no chat template; send `prompt` or `prompt_token_ids` instead",
            grpc.StatusCode.FAILED_PRECONDITION,
            "CHAT_TEMPLATE_MISSING",
        )


class DuplicateRequestId(ServiceError):
    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"request_id: {request_id!r} is already in flight",
            grpc.StatusCode.ALREADY_EXISTS,
            "DUPLICATE_REQUEST_ID",
        )


class QueueFull(ServiceError):
    def __init__(self, in_flight: int, capacity: int, retry_after: float = 1.0) -> None:
        super().__init__(
            f"the server is at capacity ({in_flight} of {capacity} requests in flight); retry later",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "QUEUE_FULL",
            retry_after,
        )


class RateLimited(ServiceError):
    """The caller's key is over its per-minute budget; `retry_after` is None when waiting cannot help."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", retry_after)


class TooManyWatchers(ServiceError):
    """Health/Watch streams are open to anyone, so their number is capped (security/health_watch.py)."""

    def __init__(self, max_streams: int) -> None:
        super().__init__(
            f"too many open Health/Watch streams (at most {max_streams}); use Check, or retry later",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TOO_MANY_HEALTH_WATCHERS",
        )


class Unauthenticated(ServiceError):
    """No API key, or one that is not known. Carries no reason (docs/contract.md)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.UNAUTHENTICATED, "")


class PermissionDenied(ServiceError):
    """A known key asked for something it may not do (cancel another key's request)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.PERMISSION_DENIED, "")


class OutOfMemory(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.RESOURCE_EXHAUSTED, "GPU_OUT_OF_MEMORY")


class NoReadyWorker(ServiceError):
    def __init__(self, message: str = "no worker is ready yet; the model may still be loading") -> None:
        super().__init__(message, grpc.StatusCode.UNAVAILABLE, "NO_READY_WORKER")


class ServerDraining(ServiceError):
    def __init__(self) -> None:
        super().__init__(
            "the server is shutting down and takes no new requests",
            grpc.StatusCode.UNAVAILABLE,
            "SERVER_DRAINING",
        )


class WorkerCrashed(ServiceError):
    def __init__(self, worker_id: int) -> None:
        super().__init__(
            f"worker {worker_id} stopped while serving this request; retry",
            grpc.StatusCode.UNAVAILABLE,
            "WORKER_CRASHED",
        )


class WorkerHung(ServiceError):
    def __init__(self, worker_id: int, timeout: float) -> None:
        super().__init__(
            f"worker {worker_id} made no progress for {timeout:g}s and is being restarted; retry",
            grpc.StatusCode.UNAVAILABLE,
            "WORKER_HUNG",
        )


class DeadlineExceeded(ServiceError):
    def __init__(self) -> None:
        super().__init__(
            "the call's deadline passed; the request was stopped", grpc.StatusCode.DEADLINE_EXCEEDED, ""
        )


class InternalError(ServiceError):
    def __init__(self, request_id: str = "") -> None:
        suffix = f" (request_id {request_id})" if request_id else ""
        super().__init__(f"internal error{suffix}; the server log has the details")


def to_rpc_status(error: ServiceError) -> grpc.Status:
    """Build the call status for `error`: code, message, and ErrorInfo (+ RetryInfo) details."""
    details = []
    if error.reason:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(domain=ERROR_DOMAIN, reason=error.reason))
        details.append(info)
    if error.retry_after is not None:
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    # grpc.StatusCode values are (number, name) pairs; google.rpc.Code uses the same numbers.
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)
