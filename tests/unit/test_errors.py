"""One map from errors to status codes, with ErrorInfo and RetryInfo details the client decodes."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from autoglm_rpc.core import errors
from autoglm_rpc.grpc_api.status import to_rpc_status


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (errors.InvalidParameter("sampling.top_p", "bad"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER"),
        (errors.PromptTooLong("long"), grpc.StatusCode.INVALID_ARGUMENT, "PROMPT_TOO_LONG"),
        (
            errors.ImageInvalid("chat.messages[1].parts[0].image", "bad"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "IMAGE_INVALID",
        ),
        (
            errors.TooManyImages("chat.messages[0].parts[10].image", 10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "TOO_MANY_IMAGES",
        ),
        (
            errors.ModalityNotSupported("chat.messages[0].parts[0].image", "m"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MODALITY_NOT_SUPPORTED",
        ),
        (
            errors.ImageOverflowsContext("chat.messages[0].parts[0].image", "long"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "PROMPT_TOO_LONG",
        ),
        (errors.ModelNotFound("a", "b"), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"),
        (errors.ChatTemplateMissing("m"), grpc.StatusCode.FAILED_PRECONDITION, "CHAT_TEMPLATE_MISSING"),
        (errors.DuplicateRequestId("r"), grpc.StatusCode.ALREADY_EXISTS, "DUPLICATE_REQUEST_ID"),
        (errors.QueueFull(3, 3), grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL"),
        (errors.OutOfMemory("oom"), grpc.StatusCode.RESOURCE_EXHAUSTED, "GPU_OUT_OF_MEMORY"),
        (errors.NoReadyWorker(), grpc.StatusCode.UNAVAILABLE, "NO_READY_WORKER"),
        (errors.ServerDraining(), grpc.StatusCode.UNAVAILABLE, "SERVER_DRAINING"),
        (errors.WorkerCrashed(1), grpc.StatusCode.UNAVAILABLE, "WORKER_CRASHED"),
        (errors.WorkerHung(1, 120.0), grpc.StatusCode.UNAVAILABLE, "WORKER_HUNG"),
        (errors.TooManyWatchers(100), grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_HEALTH_WATCHERS"),
        (errors.InternalError("r9"), grpc.StatusCode.INTERNAL, "INTERNAL_ERROR"),
    ],
)
def test_status_carries_code_reason_and_details(error: errors.ServiceError, code, reason: str) -> None:
    status = to_rpc_status(error)
    assert status.code == code
    assert status.details == error.message
    (key, value), *_ = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    decoded = status_pb2.Status.FromString(value)
    info = error_details_pb2.ErrorInfo()
    assert decoded.details[0].Unpack(info)
    assert (info.domain, info.reason) == ("autoglm", reason)
    has_retry = any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in decoded.details)
    assert has_retry == (reason == "QUEUE_FULL")


def test_internal_error_hides_details() -> None:
    assert "Traceback" not in errors.InternalError("r1").message
    assert "r1" in errors.InternalError("r1").message


def test_deadline_exceeded_has_no_reason_detail() -> None:
    status = to_rpc_status(errors.DeadlineExceeded())
    assert status.code == grpc.StatusCode.DEADLINE_EXCEEDED
    (_, value), *_ = status.trailing_metadata
    assert not status_pb2.Status.FromString(value).details
