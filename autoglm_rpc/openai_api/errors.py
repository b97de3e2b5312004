"""The one map from the error taxonomy (`autoglm_rpc.core.errors`) to HTTP: status, OpenAI's error body,
Retry-After.

The body is OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: `param` names the field for a 400,
`code` is the taxonomy's reason in lower case (`queue_full`, `model_not_found`, ...). A client's mistake is
never a 500: bad fields and too-long prompts are 400, a missing or unknown key 401, another key's request 403,
an unknown model 404, a wrong method 405, a request id in flight 409, an oversized body 413, a wrong content
type 415, over capacity or over the key's rate 429 with Retry-After, draining / no ready worker / a crashed
worker / the GPU out of memory 503, a passed deadline 504. The connection layer (`connections.py`) adds 408 (too
slow to arrive), 431 (headers too large) and 503 (too many connections). Only what the server did not foresee is
a 500 (logged, never detailed).
"""

from __future__ import annotations

import json
import logging
import math
from http import HTTPStatus

from autoglm_rpc.core.errors import InternalError, InvalidParameter, ServiceError

logger = logging.getLogger(__name__)

# By the name of the taxonomy's code; `_BY_REASON` overrides where one code covers several HTTP meanings.
_STATUS_BY_CODE = {
    "INVALID_ARGUMENT": HTTPStatus.BAD_REQUEST,
    "FAILED_PRECONDITION": HTTPStatus.BAD_REQUEST,
    "UNAUTHENTICATED": HTTPStatus.UNAUTHORIZED,
    "PERMISSION_DENIED": HTTPStatus.FORBIDDEN,
    "NOT_FOUND": HTTPStatus.NOT_FOUND,
    "ALREADY_EXISTS": HTTPStatus.CONFLICT,
    "RESOURCE_EXHAUSTED": HTTPStatus.TOO_MANY_REQUESTS,
    "UNAVAILABLE": HTTPStatus.SERVICE_UNAVAILABLE,
    "DEADLINE_EXCEEDED": HTTPStatus.GATEWAY_TIMEOUT,
}
_BY_REASON = {"GPU_OUT_OF_MEMORY": HTTPStatus.SERVICE_UNAVAILABLE}
_TYPES = {
    HTTPStatus.BAD_REQUEST: "invalid_request_error",
    HTTPStatus.UNAUTHORIZED: "authentication_error",
    HTTPStatus.FORBIDDEN: "permission_error",
    HTTPStatus.NOT_FOUND: "not_found_error",
    HTTPStatus.CONFLICT: "conflict_error",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "invalid_request_error",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "invalid_request_error",
    HTTPStatus.TOO_MANY_REQUESTS: "rate_limit_error",
    HTTPStatus.SERVICE_UNAVAILABLE: "service_unavailable_error",
    HTTPStatus.GATEWAY_TIMEOUT: "timeout_error",
}
# Fields the front end names in the gRPC contract's terms, as OpenAI's API names them.
_PARAMS = {
    "prompt_token_ids.ids": "prompt",
    "chat.messages": "messages",
    "output.top_logprobs": "top_logprobs",
    "stopping.max_new_tokens": "max_tokens",
    "stopping.stop_token_ids": "stop_token_ids",
    "request_id": "x-request-id",
}


def http_status(error: ServiceError) -> HTTPStatus:
    return _BY_REASON.get(error.reason) or _STATUS_BY_CODE.get(error.code.name, HTTPStatus.INTERNAL_SERVER_ERROR)


def error_body(status: HTTPStatus, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error body; a 4xx the table does not name (405, 408, 431, ...) is the client's invalid request."""
    kind = _TYPES.get(status) or ("invalid_request_error" if 400 <= status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def service_error_body(error: ServiceError) -> tuple[HTTPStatus, dict, dict[str, str]]:
    """The status, body and extra headers (Retry-After) a caller gets for `error`."""
    status = http_status(error)
    param = None
    message = error.message
    if isinstance(error, InvalidParameter):
        param = _PARAMS.get(error.field, error.field)
        if param != error.field:
            message = param + message[len(error.field) :]
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return status, error_body(status, message, param, error.reason.lower() or None), headers


def unexpected_error_body(error: BaseException, where: str) -> tuple[HTTPStatus, dict, dict[str, str]]:
    """A 500 for what the server did not foresee: logged by type and place, no detail to the caller."""
    logger.error("unexpected %s in %s", type(error).__name__, where)
    logger.debug("unexpected error in %s", where, exc_info=error)
    return service_error_body(InternalError())


def sse_error(error: BaseException, where: str) -> bytes:
    """The event that ends a stream whose response (status 200) has already started."""
    if isinstance(error, ServiceError):
        _, body, _ = service_error_body(error)
    else:
        _, body, _ = unexpected_error_body(error, where)
    return b"data: " + json.dumps(body).encode() + b"\n\n"
