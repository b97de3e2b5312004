"""The server subprocess of a service benchmark: `python -m bench.service_process SETTINGS_JSON`.

It builds the real service with `autoglm_rpc.startup.server.build_app` (the gateway, the pipes, the worker
processes), waits until a worker is ready, prints one JSON line `{"port": N, "http_port": M, "pid": P}` on
stdout, and serves until its stdin closes (the parent's way of saying "stop"), then drains and exits. Logs go to
stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

from autoglm_rpc.startup.config import Settings
from autoglm_rpc.startup.server import build_app


async def _serve(settings: Settings) -> None:
    app = build_app(settings)
    try:
        await app.start()
        await app.wait_until_ready()
        http_port = app.http.port if app.http is not None else None
        sys.stdout.write(json.dumps({"port": app.port, "http_port": http_port, "pid": os.getpid()}) + "\n")
        sys.stdout.flush()
        # Block until the parent closes our stdin (or dies), without blocking the event loop.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await app.stop(grace=1.0)


def main(argv: list[str]) -> int:
    settings = Settings(**json.loads(argv[0]))
    settings.validate()
    logging.basicConfig(level=settings.log_level, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(_serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
