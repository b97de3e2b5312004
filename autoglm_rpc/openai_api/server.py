"""The HTTP listener: uvicorn serving the OpenAI-compatible app on the gateway's own event loop, beside grpc.aio.

`HttpServer.bind(...)` binds and listens at once (port 0 picks a free port, known before anything runs; a port in
use is an `OSError` naming the address, as for gRPC); `start()` runs uvicorn as a task of the running loop;
`stop()` asks it to finish: no new connections, the responses in flight get `grace` seconds. uvicorn's own
signal handling is left out (the gateway handles SIGINT/SIGTERM and drains both protocols), and so is its access
log (ours is `autoglm_rpc.access`); its start and stop lines show only at DEBUG. TLS uses the gRPC server's
certificate and key, and with `tls_client_ca` asks for client certificates just as gRPC does. Connections are
bounded by `HttpLimits` (`connections.py`: a cap under half the open-file limit, header and body timeouts,
keep-alive idle time, header size and count); while it serves, failed accepts are logged once per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from autoglm_rpc.openai_api.connections import AcceptErrorThrottle, HttpLimits, affordable_limits, protocol_class
from autoglm_rpc.security import open_files

logger = logging.getLogger(__name__)


# asyncio takes its `backlog` argument both as the listen queue and as how many connections one turn of the loop
# accepts and sets up. At 2048, 1,500 idle connections arriving at once held the loop, and every gRPC stream on
# it, for 0.7-1 s per turn on a loaded 2-core VM; 32 at a time keeps each turn under about 0.1 s, while the
# kernel still queues up to LISTEN_BACKLOG connections for the turns to come.
LISTEN_BACKLOG = 2048
ACCEPT_BATCH = 32


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the gateway owns SIGINT/SIGTERM: a signal drains gRPC and HTTP together

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for sock in sockets or ():
            sock.listen(LISTEN_BACKLOG)  # asyncio listened with ACCEPT_BATCH; the kernel may queue more


@dataclass(frozen=True, slots=True)
class HttpTls:
    cert: str
    key: str
    client_ca: str | None = None


class HttpServer:
    def __init__(self, app: object, sock: socket.socket, tls: HttpTls | None, limits: HttpLimits) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.is_tls = tls is not None
        self.limits = affordable_limits(limits, open_files.open_file_limit())
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]
            http=protocol_class(self.limits),
            timeout_keep_alive=self.limits.keep_alive_timeout,  # type: ignore[arg-type]
            backlog=ACCEPT_BATCH,
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=1,
            ssl_certfile=tls.cert if tls else None,
            ssl_keyfile=tls.key if tls else None,
            ssl_ca_certs=tls.client_ca if tls else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE,
        )
        config.load()  # now: a certificate that cannot be read fails the start, not the first call
        if not logger.isEnabledFor(logging.DEBUG):
            # Its start and stop lines repeat the gateway's own, and would follow a fatal error's line at exit.
            logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self._accept_errors = AcceptErrorThrottle()

    @classmethod
    def bind(
        cls, app: object, host: str, port: int, tls: HttpTls | None = None, limits: HttpLimits | None = None
    ) -> HttpServer:
        """Bind host:port now (0: a free port); OSError naming the address when it cannot be bound."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio sets TCP_NODELAY only on sockets that
        # say TCP. Without it each SSE chunk after the headers waits for the client's delayed ACK (about 40 ms
        # per response on a kept-alive connection).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:  # said as the gRPC port's refusal says it (binding.py)
                message = (
                    f"http: port {port} on {host} is in use; stop what listens there or pick another --http-port"
                )
            else:
                message = f"http: could not bind {host}:{port}: {exc.strerror}"
            raise OSError(exc.errno, message) from None
        sock.setblocking(False)
        return cls(app, sock, tls, limits or HttpLimits())

    def start(self) -> None:
        logging.getLogger("asyncio").addFilter(self._accept_errors)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self.sock]))

    async def stop(self) -> None:
        """Close the listener and the idle connections; responses still being written get about a second."""
        if self._task is None:
            self.sock.close()
            return
        self._server.should_exit = True
        try:
            await self._task
        except (Exception, SystemExit) as exc:  # uvicorn exits on start-up failures: log, keep the loop
            logger.error("http server stopped with %s", type(exc).__name__)
        self._task = None
        self.sock.close()
        logging.getLogger("asyncio").removeFilter(self._accept_errors)
