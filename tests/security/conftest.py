"""Fixtures for the security tests: certificates, and a gateway that runs without worker processes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from autoglm_rpc.startup.config import Settings
from autoglm_rpc.startup.server import App, build_app
from tests.security.pki import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextmanager
def gateway_only(settings: Settings) -> Iterator[App]:
    """The real gRPC and HTTP servers of `settings`, started without their workers: enough for transport,
    authentication, health and ModelService (generation answers NO_READY_WORKER). Cheap: no model is loaded."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> App:
        app = build_app(settings)
        await app.server.start()
        if app.http is not None:
            app.http.start()
        return app

    app = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    try:
        yield app
    finally:
        asyncio.run_coroutine_threadsafe(app.server.stop(0), loop).result(30)
        if app.http is not None:
            asyncio.run_coroutine_threadsafe(app.http.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def write_keys(path: Path, keys: dict[str, str]) -> Path:
    """A keys file for {key: owner name}, written the way `autoglm-rpc hash-key` prints lines."""
    from autoglm_rpc.security.keys import key_line

    path.write_text("# test keys\n" + "".join(key_line(key, name) + "\n" for key, name in keys.items()))
    return path
