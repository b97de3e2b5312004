"""The gateway's error taxonomy, the same for every protocol (docs/contract.md's table); it imports no protocol.

Code behind the edges raises a `ServiceError` subclass: a `Code` (named as gRPC names its status codes, the
contract's vocabulary), a stable reason and a message that names the problem. Each protocol maps it once: gRPC in
`servicers/status.py` (the status with a `google.rpc.ErrorInfo` detail, domain "autoglm", and for a retry a
`RetryInfo`), HTTP in `openai_api/errors.py` (a status and OpenAI's error body). Anything else becomes INTERNAL /
INTERNAL_ERROR: logged with the request id, never a stack trace to the client.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

ERROR_DOMAIN = "autoglm"


class Code(enum.Enum):
    """The kinds of failure; names and meanings are gRPC's status codes (a `grpc.StatusCode` has the same name)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


@dataclass
class ServiceError(Exception):
    """A failure a caller should see: a status code, a stable reason and a message that names the problem."""

    message: str
    code: Code = Code.INTERNAL
    reason: str = "INTERNAL_ERROR"
    retry_after: float | None = None

    def __str__(self) -> str:
        return self.message


class InvalidParameter(ServiceError):
    """A request field is missing, out of range or inconsistent; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", Code.INVALID_ARGUMENT, "INVALID_PARAMETER")
        self.field = field


class ImageInvalid(InvalidParameter):
    """An image part that cannot be used: its source (a URL scheme, a file outside the allowed path), its bytes
    (corrupt, truncated, not PNG / JPEG / WebP) or its size (over the byte or pixel limit); names the part."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.reason = "IMAGE_INVALID"


class TooManyImages(InvalidParameter):
    """A chat with more images than `max_images_per_prompt`; names the first part over the limit."""

    def __init__(self, field: str, limit: int) -> None:
        super().__init__(field, f"at most {limit} images per prompt")
        self.reason = "TOO_MANY_IMAGES"


class ModalityNotSupported(InvalidParameter):
    """An image for a model without a vision tower; names the first image part."""

    def __init__(self, field: str, model: str) -> None:
        super().__init__(field, f"model {model!r} takes text only (its checkpoint has no vision tower)")
        self.reason = "MODALITY_NOT_SUPPORTED"


class ImageOverflowsContext(InvalidParameter):
    """The prompt passes the context limit inside this image's tokens (PROMPT_TOO_LONG, naming the part)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.reason = "PROMPT_TOO_LONG"


class PromptTooLong(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, Code.INVALID_ARGUMENT, "PROMPT_TOO_LONG")


class ModelNotFound(ServiceError):
    def __init__(self, model: str, served: str) -> None:
        super().__init__(
            f"model {model!r} is not served here; this server serves {served!r}",
            Code.NOT_FOUND,
            "MODEL_NOT_FOUND",
        )


class ChatTemplateMissing(ServiceError):
    def __init__(self, model: str) -> None:
        super().__init__(
            f"chat: model {model!r} has no chat template; send `prompt` or `prompt_token_ids` instead",
            Code.FAILED_PRECONDITION,
            "CHAT_TEMPLATE_MISSING",
        )


class DuplicateRequestId(ServiceError):
    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"request_id: {request_id!r} is already in flight",
            Code.ALREADY_EXISTS,
            "DUPLICATE_REQUEST_ID",
        )


class QueueFull(ServiceError):
    def __init__(self, in_flight: int, capacity: int, retry_after: float = 1.0) -> None:
        super().__init__(
            f"the server is at capacity ({in_flight} of {capacity} requests in flight); retry later",
            Code.RESOURCE_EXHAUSTED,
            "QUEUE_FULL",
            retry_after,
        )


class RateLimited(ServiceError):
    """The caller's key is over its per-minute budget; `retry_after` is None when waiting cannot help."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message, Code.RESOURCE_EXHAUSTED, "RATE_LIMITED", retry_after)


class TooManyWatchers(ServiceError):
    """Health/Watch streams are open to anyone, so their number is capped (grpc_api/health_watch.py)."""

    def __init__(self, max_streams: int) -> None:
        super().__init__(
            f"too many open Health/Watch streams (at most {max_streams}); use Check, or retry later",
            Code.RESOURCE_EXHAUSTED,
            "TOO_MANY_HEALTH_WATCHERS",
        )


class Unauthenticated(ServiceError):
    """No API key, or one that is not known. Carries no reason (docs/contract.md)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Code.UNAUTHENTICATED, "")


class PermissionDenied(ServiceError):
    """A known key asked for something it may not do (cancel another key's request)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Code.PERMISSION_DENIED, "")


class OutOfMemory(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, Code.RESOURCE_EXHAUSTED, "GPU_OUT_OF_MEMORY")


class NoReadyWorker(ServiceError):
    def __init__(self, message: str = "no worker is ready yet; the model may still be loading") -> None:
        super().__init__(message, Code.UNAVAILABLE, "NO_READY_WORKER")


class ServerDraining(ServiceError):
    """The server is going away: a new request is refused, or (with `message` saying why) one in flight is cut."""

    def __init__(self, message: str = "the server is shutting down and takes no new requests") -> None:
        super().__init__(message, Code.UNAVAILABLE, "SERVER_DRAINING")

    @classmethod
    def stopped_by_second_signal(cls) -> ServerDraining:
        """A request cut because a second SIGTERM/SIGINT ended the drain."""
        return cls(
            "the server was stopped by a second signal (SIGTERM or SIGINT) before this request finished; retry it "
            "on another server"
        )

    @classmethod
    def grace_over(cls, grace: float) -> ServerDraining:
        """A request still running when the drain's grace period ended."""
        return cls(
            f"the server shut down: its drain grace period ({grace:g}s) ended before this request finished; retry "
            "it on another server"
        )


class WorkerCrashed(ServiceError):
    def __init__(self, worker_id: int) -> None:
        super().__init__(
            f"worker {worker_id} stopped while serving this request; retry",
            Code.UNAVAILABLE,
            "WORKER_CRASHED",
        )


class WorkerHung(ServiceError):
    """The watchdog found the worker stuck (pool/watchdog.py): UNAVAILABLE over gRPC, 503 over HTTP."""

    def __init__(self, worker_id: int, timeout: float) -> None:
        super().__init__(
            f"worker {worker_id} made no progress for {timeout:g}s and is being restarted; retry",
            Code.UNAVAILABLE,
            "WORKER_HUNG",
        )


class DeadlineExceeded(ServiceError):
    def __init__(self) -> None:
        super().__init__("the call's deadline passed; the request was stopped", Code.DEADLINE_EXCEEDED, "")


class InternalError(ServiceError):
    def __init__(self, request_id: str = "") -> None:
        suffix = f" (request_id {request_id})" if request_id else ""
        super().__init__(f"internal error{suffix}; the server log has the details")
