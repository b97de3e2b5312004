"""Bearer-token authentication for every call but health checks.

A call must carry `authorization: Bearer <key>` with a key of `ApiKeys`; otherwise it ends UNAUTHENTICATED
before its request is even parsed. Health (`grpc.health.v1.Health`) stays open, so load balancers and kubelets
need no key. Reflection is not open: it describes the whole API, so it needs a key like any other call (grpcurl's
`-H 'authorization: Bearer ...'` is sent with reflection requests too). The key's owner name is available to the
handler through `current_principal()` (a context variable: grpc.aio runs the interceptors and the handler of a
call in the same context).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

import grpc

from autoglm_rpc.core.errors import Unauthenticated
from autoglm_rpc.grpc_api.handlers import failing_handler
from autoglm_rpc.security.keys import ApiKeys, bearer_token

logger = logging.getLogger(__name__)

OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})
_principal: ContextVar[str | None] = ContextVar("autoglm_principal", default=None)


def current_principal() -> str | None:
    """The owner name of the API key of the call being handled; None when authentication is off."""
    return _principal.get()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with a known API key (health excepted) and records the key's owner."""

    def __init__(self, keys: ApiKeys) -> None:
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.split("/")[1:2] and method.split("/")[1] in OPEN_SERVICES:
            return await continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        owner = None if token is None else self._keys.identify(token)
        if owner is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            problem = "no API key: send `authorization: Bearer <key>`" if token is None else "unknown API key"
            logger.info("refused %s: %s", method, problem)
            return failing_handler(handler, Unauthenticated(problem))
        _principal.set(owner)
        return await continuation(handler_call_details)
