"""Turns exceptions escaping a handler into the call's status: the servicers' one error boundary."""

from __future__ import annotations

import asyncio
import functools
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from autoglm_rpc.core.errors import InternalError, ServiceError
from autoglm_rpc.grpc_api.status import to_rpc_status

logger = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")


async def abort(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    """Abort the call with `error`'s status; unexpected errors are logged and become INTERNAL.

    An unexpected exception's message may quote the request (a prompt, a chat message), so by default the log
    gets only its type and where it was raised; the message and the stack trace go to the DEBUG level. The
    client gets neither.
    """
    if not isinstance(error, ServiceError):
        logger.error("unexpected %s in %s at %s", type(error).__name__, method, _raised_at(error))
        logger.debug("unexpected error in %s", method, exc_info=error)
        error = InternalError()
    await context.abort_with_status(to_rpc_status(error))


async def _client_left(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call ended from the client's side. A write can fail a moment before grpc marks the call
    cancelled, so the loop runs once more before the answer."""
    if context.cancelled() or context.done():
        return True
    await asyncio.sleep(0)
    return context.cancelled() or context.done()


def _raised_at(error: BaseException) -> str:
    """`file.py:line in function` of the innermost frame of `error`'s traceback: code, never data."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "an unknown place"
    frame = frames[-1]
    return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}"


def unary(
    handler: Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]],
) -> Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]:
    @functools.wraps(handler)
    async def wrapper(self: Any, request: Request, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            if await _client_left(context):  # a failed write is the disconnect's consequence, not a fault
                logger.debug("%s: the client left mid-call (%s)", handler.__name__, type(error).__name__)
                return None  # type: ignore[return-value]  # nobody is there to read a status
            await abort(context, error, handler.__name__)
            raise  # abort_with_status raises; this line is never reached

    return wrapper
