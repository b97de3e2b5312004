"""Malformed request bytes end INVALID_ARGUMENT naming the problem, on every service.

Left alone, grpc turns a deserializer's exception into UNKNOWN with the parser's message and logs a stack trace.
This interceptor makes deserialization total (a failure becomes a `Malformed` value) and refuses such a message
before any behaviour sees it, with the parser's reason (corrupt wire format, invalid UTF-8 in a string field).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from autoglm_rpc.core.errors import InvalidParameter
from autoglm_rpc.grpc_api.handlers import guard_requests, map_deserializer
from autoglm_rpc.grpc_api.status import to_rpc_status

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Malformed:
    """What a request deserializer returned instead of raising: why the bytes are not a valid message."""

    problem: str


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize_or_describe(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as error:  # protobuf's DecodeError, or any parser's failure
            # The parser's message names the type and the problem, never the content.
            return Malformed(str(error) or type(error).__name__)

    return deserialize_or_describe


async def _refuse_malformed(request: Any, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, Malformed):
        logger.debug("refused a malformed request: %s", request.problem)
        await context.abort_with_status(to_rpc_status(InvalidParameter("request", request.problem)))


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Refuses request bytes that do not parse with INVALID_ARGUMENT / INVALID_PARAMETER."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return guard_requests(map_deserializer(handler, _tolerant), _refuse_malformed)
