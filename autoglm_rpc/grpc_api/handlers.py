"""Small tools for interceptors: rewrite a method handler's parts, or build one that only fails the call.

grpc.aio runs a behaviour according to its kind (coroutine function, async generator function, or plain function
in a thread), so every wrapper here keeps the kind of the behaviour it wraps.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from autoglm_rpc.core.errors import ServiceError
from autoglm_rpc.grpc_api.status import to_rpc_status

_BEHAVIORS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
Guard = Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]


def guard_requests(handler: grpc.RpcMethodHandler, guard: Guard) -> grpc.RpcMethodHandler:
    """`handler` with `guard(request, context)` awaited on every request message before the behaviour sees it.

    The guard aborts the call (raises) to refuse a message. Plain (non-async) behaviours are left unguarded.
    """
    for name in _BEHAVIORS:
        behavior = getattr(handler, name)
        if behavior is None:
            continue
        wrap = _guard_stream if handler.request_streaming else _guard_unary
        wrapped = wrap(behavior, guard)
        return handler._replace(**{name: wrapped}) if wrapped is not None else handler
    return handler


def _guard_unary(behavior: Callable, guard: Guard) -> Callable | None:
    if inspect.isasyncgenfunction(behavior):

        @functools.wraps(behavior)
        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await guard(request, context)
            async for message in behavior(request, context):
                yield message

        return generator
    if inspect.iscoroutinefunction(behavior):

        @functools.wraps(behavior)
        async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await guard(request, context)
            return await behavior(request, context)

        return coroutine
    return None


def _guard_stream(behavior: Callable, guard: Guard) -> Callable | None:
    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for request in requests:
            await guard(request, context)
            yield request

    if inspect.isasyncgenfunction(behavior):

        @functools.wraps(behavior)
        async def generator(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for message in behavior(checked(requests, context), context):
                yield message

        return generator
    if inspect.iscoroutinefunction(behavior):

        @functools.wraps(behavior)
        async def coroutine(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return await behavior(checked(requests, context), context)

        return coroutine
    return None


def map_deserializer(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[[bytes], Any]], Callable[[bytes], Any]]
) -> grpc.RpcMethodHandler:
    """`handler` with its request deserializer passed through `wrap` (no deserializer: the identity)."""
    deserializer = handler.request_deserializer or (lambda data: data)
    return handler._replace(request_deserializer=wrap(deserializer))


def failing_handler(handler: grpc.RpcMethodHandler | None, error: ServiceError) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that fails every call with `error`, reading no request."""
    status = to_rpc_status(error)

    async def fail(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort_with_status(status)

    async def fail_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        await context.abort_with_status(status)
        yield  # pragma: no cover  (abort raises; this makes the function an async generator)

    request_streaming = handler is not None and handler.request_streaming
    response_streaming = handler is not None and handler.response_streaming
    match (request_streaming, response_streaming):
        case (False, False):
            return grpc.unary_unary_rpc_method_handler(fail)
        case (False, True):
            return grpc.unary_stream_rpc_method_handler(fail_stream)
        case (True, False):
            return grpc.stream_unary_rpc_method_handler(fail)
    return grpc.stream_stream_rpc_method_handler(fail_stream)
