"""Test helpers: tiny checkpoints and a real server (gRPC on loopback, real worker processes) in a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from autoglm.v1 import model_pb2
from autoglm_rpc.client import Client
from autoglm_rpc.startup.config import Settings
from autoglm_rpc.startup.server import App, build_app


def server_settings(model: Path, **overrides: object) -> Settings:
    """Settings for a test server: loopback, any free port, CPU workers with one thread each."""
    values: dict[str, object] = {
        "model": str(model),
        "host": "127.0.0.1",
        "port": 0,
        "device": "cpu",
        "workers": 2,
        "worker_threads": 1,
        "max_batch_size": 8,
        "max_num_batched_tokens": 64,
        "grace_period": 1.0,
        "http_port": 0,
        "worker_start_timeout": 120.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class ServerThread:
    """Runs `App` on its own event loop in a daemon thread; `start()` returns once a worker is ready."""

    settings: Settings
    app: App | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None
    _thread: threading.Thread | None = None

    @property
    def target(self) -> str:
        assert self.app is not None
        return f"127.0.0.1:{self.app.port}"

    def client(self) -> Client:
        return Client(self.target)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def start(self, timeout: float = 180.0) -> ServerThread:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the test server did not become ready")
        if self._error is not None:
            raise RuntimeError("the test server failed to start") from self._error
        return self

    def call(self, function, *args):
        """Run a plain function on the server's event loop thread and return its result."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(_invoke(function, *args), self._loop)
        return future.result(30)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(60)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.app = build_app(self.settings)
            await self.app.start()
            await self.app.wait_until_ready()
        except BaseException as error:
            self._error = error
            self._ready.set()
            if self.app is not None:
                await self.app.stop(grace=0)
            return
        self._ready.set()
        await self._stop.wait()
        await self.app.stop(grace=1.0)


async def _invoke(function, *args):
    return function(*args)


def wait_for_info(client: Client, condition: Callable[[model_pb2.GetServerInfoResponse], bool], timeout: float):
    """Poll GetServerInfo (a test's view from outside) until `condition` holds; return that answer."""
    deadline = time.monotonic() + timeout
    while True:
        info = client.server_info(timeout=10)
        if condition(info):
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last answer:\n{info}")
        time.sleep(0.1)
