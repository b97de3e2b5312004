"""A cap on open `grpc.health.v1.Health/Watch` streams.

Health stays open without an API key (load balancers and kubelets have none), and a Watch stream lives as long
as its caller keeps it: without a cap, anyone who can reach the port could hold thousands of them, each holding
memory. Past `max_streams` open ones, a new Watch ends at once with RESOURCE_EXHAUSTED; a
probe needs one or two, and `Check` is never limited.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from autoglm_rpc.core.errors import TooManyWatchers
from autoglm_rpc.grpc_api.status import to_rpc_status

logger = logging.getLogger(__name__)

WATCH_METHOD = "/grpc.health.v1.Health/Watch"


class HealthWatchLimit(grpc.aio.ServerInterceptor):
    """Refuses a Health/Watch stream while `max_streams` are open."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.num_open = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method != WATCH_METHOD:
            return handler
        if not inspect.iscoroutinefunction(handler.unary_stream):
            return handler  # grpc_health's aio Watch is a coroutine that writes with context.write()
        return handler._replace(unary_stream=self._counted(handler.unary_stream))

    def _counted(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(behavior)
        async def watch(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.num_open >= self.max_streams:
                logger.debug("refused a Health/Watch: %d streams open", self.num_open)
                await context.abort_with_status(to_rpc_status(TooManyWatchers(self.max_streams)))
            self.num_open += 1
            try:
                return await behavior(request, context)
            finally:
                self.num_open -= 1

        return watch
