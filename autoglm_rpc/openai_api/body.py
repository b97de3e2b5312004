"""A request body parsed as JSON within bounds the event loop can afford, before any model validates it.

The event loop serves gRPC and HTTP together, so the work one body costs it must stay small whatever the body's
shape: a 16 MiB body of two million floats, or of five million empty lists, used to take it seconds to minutes
(parsing, then validation that failed once per element). `parse_json_body` first bounds the number of JSON values
on the raw bytes, in C (`count_json_values`: a few linear passes, no Python objects), and refuses a body with more
than `max_values`; only then does `json.loads` build it. It also refuses bytes that are not UTF-8, JSON that does
not parse or nests too deeply, and a lone surrogate in any string (`"\\ud800"`: valid JSON, not valid text; the
tokenizer and the UTF-8 encoder of every response would fail on it), naming the field where one is.

The schemas (`schemas.py`) then validate strictly and stop at a list's first bad element, so validation is bounded
by the same count. `JsonBodyRoute` hands the parsed value to FastAPI, which would otherwise parse the body again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

# Beyond the prompt's token ids (at most the context), what a body may hold: up to 1024 messages of a few fields,
# content parts, stop sequences and the sampling fields, with room to spare.
EXTRA_JSON_VALUES = 65_536
STATE_KEY = "json_body"
# A `\uD800`-`\uDFFF` escape in the raw text: the only way a JSON string decoded from valid UTF-8 gets a surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_OPENERS = b"[{,:"  # what a JSON value or key follows
_SURROGATE = re.compile("[\ud800-\udfff]")  # after decoding, pairs are one character: any surrogate is lone


class BodyError(ValueError):
    """Why a body is refused (a 400): the message, the field it names (or None) and the error code."""

    def __init__(self, message: str, param: str | None, code: str) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def max_json_values(max_context_tokens: int) -> int:
    """The values a body may hold: a prompt of token ids as long as the context, and the rest of a request."""
    return max_context_tokens + EXTRA_JSON_VALUES


def count_json_values(raw: bytes, limit: int) -> int:
    """An upper bound on the values and keys of the JSON text `raw`, or past `limit` some number over it.

    Read in C, in a few linear passes that build no Python objects. Every value or key is the document itself
    or follows one of `[ { , :` outside strings. Counted in the whole text, those characters overcount only by
    the ones inside strings; when that puts the count over `limit`, strings are cut out (escaped backslashes
    and quotes removed, then the text split on its quotes: at most `2 * limit + 1` pieces, since a text with
    more strings than `limit` is over it anyway, each string being a value or a key) and the count is taken
    between them. For text that is not valid JSON the bound holds for the valid start that `json.loads` reads
    before it stops at the error.
    """
    count = 1 + len(raw) - len(raw.translate(None, _OPENERS))
    if count <= limit:
        return count
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    num_strings = text.count(b'"') // 2
    if num_strings > limit:
        return num_strings
    outside = b"".join(text.split(b'"')[0::2])
    return 1 + len(outside) - len(outside.translate(None, _OPENERS))


def parse_json_body(raw: bytes, max_values: int) -> Any:
    """The JSON value of `raw`; `BodyError` when it holds more than `max_values` values or is not valid."""
    num_values = count_json_values(raw, max_values)
    if num_values > max_values:
        raise BodyError(
            f"the body holds more than {max_values} JSON values (at most the context's tokens plus "
            f"{EXTRA_JSON_VALUES})",
            None,
            "too_many_json_values",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyError(f"the body is not valid UTF-8 (byte {error.start})", None, "malformed_json") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise BodyError(f"the body is not valid JSON: {error.msg}", None, "malformed_json") from None
    except RecursionError:
        raise BodyError("the body's JSON nests too deeply", None, "malformed_json") from None
    if _SURROGATE_ESCAPE.search(text):
        field = lone_surrogate_field(value)
        if field is not None:
            message = f"{field or 'body'}: holds a lone surrogate (an unpaired \\uD800-\\uDFFF), not valid text"
            raise BodyError(message, field or None, "invalid_unicode")
    return value


def lone_surrogate_field(value: Any) -> str | None:
    """The path (`messages[0].content`) of the first string or key holding a lone surrogate; None if none does.

    Iterative, so a deep document cannot exhaust the stack; the walk is bounded by the values counted before.
    """
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path
        elif isinstance(item, dict):
            for key, member in reversed(item.items()):
                member_path = f"{path}.{key}" if path else str(key)
                if _SURROGATE.search(key):
                    return member_path
                pending.append((member_path, member))
        elif isinstance(item, list):
            pending.extend((f"{path}[{index}]", member) for index, member in reversed(list(enumerate(item))))
    return None


class _ParsedJsonRequest(Request):
    async def json(self) -> Any:
        state = self.scope.get("state") or {}
        if STATE_KEY in state:
            return state[STATE_KEY]
        return await super().json()


class JsonBodyRoute(APIRoute):
    """A route whose JSON body is the value the body middleware parsed already (`scope["state"]["json_body"]`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parsed_body_handler(request: Request) -> Response:
            return await handler(_ParsedJsonRequest(request.scope, request.receive))

        return parsed_body_handler
