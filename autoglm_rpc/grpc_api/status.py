"""The one map from the error taxonomy (`autoglm_rpc.core.errors`) to a gRPC call status (the table:
docs/contract.md)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from autoglm_rpc.core.errors import ERROR_DOMAIN, ServiceError


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
    # The taxonomy's codes are named as grpc's; grpc.StatusCode values are (number, name) pairs, and
    # google.rpc.Code uses the same numbers.
    code = grpc.StatusCode[error.code.name]
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)
