"""SIGINT and SIGTERM in the gateway: the first one starts the drain, a second one ends it at once.

The workers ignore both (`workers.signals.ignore_stop_signals`), so a signal sent to the whole process group
(Ctrl-C, `kill -- -PGID`, systemd's KillMode=control-group) drains exactly as one sent to the gateway alone. One
stop can arrive twice: `timeout(1)` signals the process and then its process group, and some supervisors do the
same. So the same signal again within `REPEAT_WINDOW` seconds is taken as the same stop; after that, or as the
other signal, it is a second stop and cuts the drain.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

REPEAT_WINDOW = 1.0  # seconds within which the same signal again is one delivery seen twice
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """`stopped` is set by the first stop signal; `on_second` is called for each later one (see the module)."""

    def __init__(self, on_second: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.stopped = asyncio.Event()
        self._on_second = on_second
        self._clock = clock
        self._first: tuple[int, float] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self.received, signum)

    def received(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._first is None:
            self._first = (signum, self._clock())
            self.stopped.set()
            return
        first, when = self._first
        if signum == first and self._clock() - when < REPEAT_WINDOW:
            logger.info("%s again within %.0fs of the first: the same stop, delivered twice", name, REPEAT_WINDOW)
            return
        logger.warning("second stop signal (%s): ending the drain now; requests still running are cut", name)
        self._on_second()
