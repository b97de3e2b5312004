"""The OpenAI-compatible routes: a thin adapter from HTTP to the front end, as the gRPC servicer is from protobuf.

`build_api(...)` returns the FastAPI app: `GET /v1/models`, `GET /v1/models/{model}`, `POST /v1/chat/completions`,
`POST /v1/completions`, `GET /health` (readiness: 200 or 503), `/docs`. The handlers convert the body (every check
of a field is `convert.py`'s), count the call against the key's rate, and hand the front end's events to a
`GenerationResponse` (`responses.py`), which writes them as OpenAI's JSON or server-sent events. Errors become
OpenAI's error body through the one HTTP map (`errors.py`); a body that is not JSON or has a field of the wrong
type is a 400 naming the field. The body arrives parsed (`body.py`, through the body middleware); the schemas
validate it strictly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from autoglm_rpc.core.errors import ModelNotFound, ServiceError
from autoglm_rpc.core.frontend import Frontend
from autoglm_rpc.core.requests import GenerationRequest, RequestLimits
from autoglm_rpc.openai_api import convert, schemas
from autoglm_rpc.openai_api.body import JsonBodyRoute
from autoglm_rpc.openai_api.errors import error_body, service_error_body, unexpected_error_body
from autoglm_rpc.openai_api.responses import ChatChunks, CompletionChunks, GenerationResponse
from autoglm_rpc.telemetry.generation import GenerationTelemetry

_ERRORS = {status: {"model": schemas.ErrorBody} for status in (400, 401, 404, 409, 413, 415, 429, 503, 504)}
# Every field name of the request bodies: any other string in an error's location is a union member's tag.
_FIELD_NAMES = frozenset(
    name
    for model in (schemas.ChatCompletionRequest, schemas.CompletionRequest, schemas.ChatMessage,
                  schemas.ContentPart, schemas.StreamOptions)
    for name in model.model_fields
)  # fmt: skip


class OpenAIRoutes:
    """The handlers; `frontend` runs the requests, `telemetry` observes them exactly as for gRPC."""

    def __init__(self, frontend: Frontend, telemetry: GenerationTelemetry, limits: RequestLimits) -> None:
        self._frontend = frontend
        self._telemetry = telemetry
        self._limits = limits
        self._logprobs = convert.LogprobWriter(frontend.model.tokenizer)
        self._created = int(time.time())

    def models(self) -> dict:
        """One entry per name the model answers to (its id first), as vLLM lists its served model names."""
        return {"object": "list", "data": [self._card(name) for name in self._frontend.model.names]}

    def model(self, name: str) -> dict:
        served = self._frontend.model
        if name not in served.names:
            raise ModelNotFound(name, served.model_id)
        return self._card(name)

    def _card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self._created, "owned_by": "autoglm-rpc",
                "max_model_len": self._frontend.max_context_tokens}  # fmt: skip

    async def chat(self, body: schemas.ChatCompletionRequest, request: Request) -> Response:
        parsed = convert.chat_request(body, self._limits, request.headers.get("x-request-id", ""))
        return await self._serve(request, body, parsed, is_chat=True)

    async def completion(self, body: schemas.CompletionRequest, request: Request) -> Response:
        parsed = convert.completion_request(body, self._limits, request.headers.get("x-request-id", ""))
        return await self._serve(request, body, parsed, is_chat=False)

    async def _serve(
        self,
        request: Request,
        body: schemas.ChatCompletionRequest | schemas.CompletionRequest,
        parsed: GenerationRequest,
        is_chat: bool,
    ) -> Response:
        owner = request.state.owner
        self._frontend.limiter.admit_request(owner)
        observer = self._telemetry.observe(parsed, stream=body.stream)
        events = self._frontend.generate(parsed, None, owner, observer)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        writer = ChatChunks if is_chat else CompletionChunks
        return GenerationResponse(events, writer, self._logprobs, body.stream, include_usage)


def build_api(routes: OpenAIRoutes, is_ready: object) -> FastAPI:
    """The FastAPI app over `routes`; `is_ready()` answers `/health`."""
    app = FastAPI(
        title="autoglm-rpc OpenAI-compatible API",
        description="Text generation with OpenAI's request and response shapes; the gRPC API is the primary one.",
        version="1",
    )
    app.router.route_class = JsonBodyRoute  # the body comes parsed, within bounds, from the body middleware
    app.get("/v1/models", response_model=schemas.ModelList, responses=_ERRORS)(routes.models)
    app.get("/v1/models/{name}", response_model=schemas.ModelCard, responses=_ERRORS)(routes.model)
    app.post("/v1/chat/completions", response_model=schemas.ChatCompletion, responses=_ERRORS)(routes.chat)
    app.post("/v1/completions", response_model=schemas.Completion, responses=_ERRORS)(routes.completion)

    @app.get("/health", include_in_schema=True)
    def health() -> Response:
        ready = is_ready()  # type: ignore[operator]
        return JSONResponse({"status": "ready" if ready else "not ready"}, status_code=200 if ready else 503)

    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
    return app


async def _service_error(request: Request, error: ServiceError) -> JSONResponse:
    status, body, headers = service_error_body(error)
    return JSONResponse(body, status_code=status, headers=headers)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    """The framework's own refusals (no such route, method not allowed) in OpenAI's shape."""
    body = error_body(error.status_code, f"{request.method} {request.url.path}: {error.detail}")
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    status, body, headers = unexpected_error_body(error, request.url.path)
    return JSONResponse(body, status_code=status, headers=headers)


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """JSON of the wrong shape: 400 naming the field where validation got furthest.

    A union (`prompt`: text, texts, token ids...) fails once per member; the member that got deepest names the
    field, and where several got as deep, the message lists what each wanted.
    """
    errors = error.errors()
    if errors and errors[0].get("type") == "json_invalid":
        return JSONResponse(error_body(400, "the body is not valid JSON", None, "malformed_json"), status_code=400)
    located = [(_field_path(e.get("loc", ())), e.get("msg", "invalid")) for e in errors] or [((), "invalid")]
    path = max((p for p, _ in located), key=lambda p: (len(p), tuple(i for i in p if isinstance(i, int))))
    wanted = list(dict.fromkeys(msg for p, msg in located if p == path))
    param = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")
    message = f"{param or 'body'}: {', or '.join(wanted)}"
    return JSONResponse(error_body(400, message, param or None, "invalid_parameter"), status_code=400)


def _field_path(location: Sequence[Any]) -> tuple[str | int, ...]:
    """An error's location without "body" and the union members' tags (`list[int]`)."""
    return tuple(part for part in location if isinstance(part, int) or part in _FIELD_NAMES)
