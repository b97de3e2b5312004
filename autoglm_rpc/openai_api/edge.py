"""ASGI middleware in front of the routes: API keys, then the body's size and content type.

`ApiKeyMiddleware` is the HTTP twin of the gRPC `AuthInterceptor`: every `/v1/` call needs
`Authorization: Bearer <key>` with a key of `ApiKeys` (401 before the body is read); the key's owner goes to the
route in `request.state.owner` (None with authentication off). `/health` and `/docs` stay open.

`BodyLimitMiddleware` reads a POST body (at most `max_bytes`, the same `max_message_bytes` gRPC enforces: 413
past it, whether Content-Length says so or the chunks add up to it), refuses a content type other than JSON
(415) before any parsing, then parses it within `max_values` JSON values (`body.py`: 400 past them, or for bytes
that are not UTF-8 JSON, or a lone surrogate); the route takes the parsed value. A refusal leaves the connection
open, so the HTTP parser reads the unread rest of the body (discarding it, within the body timeout of
`connections.py`) and the client, still sending, gets its answer instead of a reset.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

from autoglm_rpc.core.errors import Unauthenticated
from autoglm_rpc.openai_api.body import STATE_KEY, BodyError, parse_json_body
from autoglm_rpc.openai_api.errors import error_body, service_error_body
from autoglm_rpc.security.keys import ApiKeys, bearer_token

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
PROTECTED_PREFIX = "/v1/"


class ApiKeyMiddleware:
    def __init__(self, app: App, keys: ApiKeys | None) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        owner = None
        if self.keys is not None and scope["path"].startswith(PROTECTED_PREFIX):
            headers = [
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k == b"authorization"
            ]
            token = bearer_token(headers)
            owner = None if token is None else self.keys.identify(token)
            if owner is None:
                problem = "no API key: send `Authorization: Bearer <key>`" if token is None else "unknown API key"
                logger.info("refused %s %s: %s", scope["method"], scope["path"], problem)
                status, body, _ = service_error_body(Unauthenticated(problem))
                response = JSONResponse(body, status_code=status, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        scope.setdefault("state", {})["owner"] = owner
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    def __init__(self, app: App, max_bytes: int, max_values: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_values = max_values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type != b"application/json":
            shown = media_type.decode("latin-1") or "none"
            await _refuse(scope, receive, send, HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                          f"Content-Type must be application/json, got {shown}")  # fmt: skip
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(scope, receive, send, *self._too_large())
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _refuse(scope, receive, send, *self._too_large())
                return
            if not message.get("more_body", False):
                break
        raw = bytes(body)
        try:
            scope.setdefault("state", {})[STATE_KEY] = parse_json_body(raw, self.max_values)
        except BodyError as error:
            logger.info("refused %s %s: %s", scope["method"], scope["path"], error)
            await _refuse(scope, receive, send, HTTPStatus.BAD_REQUEST, str(error), code=error.code,
                          param=error.param)  # fmt: skip
            return
        await self.app(scope, _replay(raw, receive), send)

    def _too_large(self) -> tuple[HTTPStatus, str]:
        return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over the limit of {self.max_bytes} bytes"


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the buffered body once, then the connection's own messages (the disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


_CODES = {HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "body_too_large", HTTPStatus.UNSUPPORTED_MEDIA_TYPE:
          "unsupported_media_type"}  # fmt: skip


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: HTTPStatus,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
) -> None:
    # The connection stays open: closing it with the body unread would reset it, and a client still sending
    # would see the reset, not this answer. The parser discards the rest; the body timeout bounds how long.
    body = error_body(status, message, param, code or _CODES.get(status))
    await JSONResponse(body, status_code=status)(scope, receive, send)
