"""HTTP connections within what the gateway can afford: a cap, read timeouts and bounded headers.

uvicorn bounds none of these itself: a connection that never finishes its headers was held forever, with no cap
on how many, until the process ran out of file descriptors and gRPC calls failed with it. `GuardedProtocol` is
uvicorn's httptools protocol with, from `HttpLimits` (the `server` settings of the same names):
- at most `max_connections` open connections (`max_http_connections`); one more gets a 503 and is closed;
- the request line and headers must arrive within `header_timeout` seconds of the connection opening or of the
  request's first byte (408 once a request has begun; a connection that sent nothing is just closed);
- the body within `body_timeout` seconds of the headers (408 before the response has started; after it, as when
  a refused body is being read through, the connection is closed);
- headers of at most `max_header_bytes` (request line and header lines) and `max_headers` lines: 431.
Keep-alive connections idle for `keep_alive_timeout` are closed by uvicorn itself.

A 431 is answered while the client may still be sending: the server half-closes and reads on, discarding, for
up to `LINGER_SECONDS`, so that the client sees the answer rather than a reset. Refusals carry OpenAI's error body.

`AcceptErrorThrottle` keeps a descriptor shortage from flooding the log: asyncio logs every failed accept (on
this loop, one per backlog slot per retry, thousands a second); the filter lets one line through per interval
with the count of the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from autoglm_rpc.core.config_sections import ServerSettings
from autoglm_rpc.openai_api.errors import error_body

logger = logging.getLogger(__name__)

LINGER_SECONDS = 2.0
ACCEPT_ERROR = "socket.accept() out of system resource"
_DEFAULTS = ServerSettings()


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one HTTP connection may hold and for how long (defaults: those of `ServerSettings`)."""

    max_connections: int = _DEFAULTS.max_http_connections
    header_timeout: float = _DEFAULTS.http_header_timeout
    body_timeout: float = _DEFAULTS.http_body_timeout
    keep_alive_timeout: float = _DEFAULTS.http_keep_alive_timeout
    max_header_bytes: int = _DEFAULTS.max_http_header_bytes
    max_headers: int = _DEFAULTS.max_http_headers

    @classmethod
    def from_settings(cls, server: ServerSettings) -> HttpLimits:
        return cls(
            max_connections=server.max_http_connections,
            header_timeout=server.http_header_timeout,
            body_timeout=server.http_body_timeout,
            keep_alive_timeout=server.http_keep_alive_timeout,
            max_header_bytes=server.max_http_header_bytes,
            max_headers=server.max_http_headers,
        )


def affordable_limits(limits: HttpLimits, open_file_limit: int) -> HttpLimits:
    """`limits` with the connection cap at most half the open-file limit (the rest: gRPC, pipes, files)."""
    affordable = max(1, open_file_limit // 2)
    if limits.max_connections <= affordable:
        return limits
    logger.warning(
        "max_http_connections %d is over half the open-file limit (%d); serving at most %d HTTP connections",
        limits.max_connections, open_file_limit, affordable,
    )  # fmt: skip
    return replace(limits, max_connections=affordable)


def protocol_class(limits: HttpLimits) -> type[GuardedProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to `limits`."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


class GuardedProtocol(HttpToolsProtocol):
    limits: HttpLimits = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._is_refused = False
        self._in_headers = True
        self._has_request_begun = False  # a request's first byte came, its headers not yet all
        self._bytes_in_headers = 0  # received while the headers were incomplete (before parsing)
        self._header_size = 0  # request line and header lines, parsed
        self._num_headers = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            message = f"over {self.limits.max_connections} open HTTP connections; retry later"
            # Closed at once: under a flood, lingering would hold the descriptors the cap protects.
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, message, "too_many_connections", linger=False)
            return
        self._arm(self.limits.header_timeout, self._on_header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._is_refused:
            return  # lingering after a refusal: discard
        if self._in_headers:
            # Checked before parsing: a header that never ends is refused once it is past the limit, before the
            # parser has buffered more than the limit and one read.
            if self._bytes_in_headers > self.limits.max_header_bytes:
                self._refuse_headers()
                return
            self._bytes_in_headers += len(data)
        super().data_received(data)

    # Parser callbacks: nothing more is parsed into a request once it is refused.

    def on_message_begin(self) -> None:
        if self._is_refused:
            return
        super().on_message_begin()
        self._in_headers = self._has_request_begun = True
        self._header_size = self._num_headers = 0
        if self._timer is None:  # a later request on a kept-alive connection
            self._arm(self.limits.header_timeout, self._on_header_timeout)

    def on_url(self, url: bytes) -> None:
        if self._is_refused:
            return
        self._header_size += len(url)
        if self._header_size > self.limits.max_header_bytes:
            self._refuse_headers()
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._is_refused:
            return
        self._header_size += len(name) + len(value) + 4
        self._num_headers += 1
        if self._header_size > self.limits.max_header_bytes or self._num_headers > self.limits.max_headers:
            self._refuse_headers()
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._is_refused:
            return
        self._in_headers = self._has_request_begun = False
        self._bytes_in_headers = 0
        self._disarm()
        super().on_headers_complete()
        self._arm(self.limits.body_timeout, self._on_body_timeout)

    def on_body(self, body: bytes) -> None:
        if not self._is_refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._is_refused:
            return
        self._disarm()
        super().on_message_complete()

    # Timeouts and refusals

    def _on_header_timeout(self) -> None:
        self._timer = None
        if not self._has_request_begun:
            self.transport.close()  # nothing of a request came: nobody to answer
            return
        message = f"the request's headers did not arrive within {self.limits.header_timeout:g} s"
        self._refuse(HTTPStatus.REQUEST_TIMEOUT, message, "request_timeout", linger=False)

    def _on_body_timeout(self) -> None:
        self._timer = None
        if self.cycle is None or self.cycle.response_started:
            self.transport.close()  # answered already (a refused body being read through): stop reading it
            return
        message = f"the request's body did not arrive within {self.limits.body_timeout:g} s"
        self._refuse(HTTPStatus.REQUEST_TIMEOUT, message, "request_timeout", linger=False)

    def _refuse_headers(self) -> None:
        limits = self.limits
        message = f"the request's headers are over {limits.max_header_bytes} bytes or {limits.max_headers} lines"
        self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, message, "headers_too_large", linger=True)

    def _refuse(self, status: HTTPStatus, message: str, code: str, linger: bool) -> None:
        """Answer `status` with OpenAI's error body and end the connection (after lingering, if asked)."""
        self._is_refused = True
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app reading this request's body sees a disconnect
            self.cycle.message_event.set()
        body = json.dumps(error_body(status, message, None, code)).encode()
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("latin-1") + body)
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the answer and closes; until then, discard its data
            self._arm(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class AcceptErrorThrottle(logging.Filter):
    """On the `asyncio` logger: one "out of system resource" accept failure logged per `interval` seconds."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last_logged = -float("inf")
        self._num_suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(ACCEPT_ERROR)):
            return True
        now = time.monotonic()
        if now - self._last_logged < self.interval:
            self._num_suppressed += 1
            return False
        error = record.exc_info[1] if record.exc_info else None
        record.msg = "HTTP: cannot accept connections: %s (logged once per %gs; %d more failures since then)"
        record.args = (error or "out of system resource", self.interval, self._num_suppressed)
        record.exc_info = None  # the traceback is asyncio's own accept loop, the same every time
        self._last_logged = now
        self._num_suppressed = 0
        return True
