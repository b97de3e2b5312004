"""The worker processes' signal policy (standard library only): every rank of every replica ignores the signals
that stop a service, and leaves stopping to the gateway."""

from __future__ import annotations

import signal


def ignore_stop_signals() -> None:
    """Ignore SIGINT and SIGTERM: the gateway alone decides when a worker stops.

    Ctrl-C, `kill -- -PGID`, systemd's default KillMode=control-group and some container runtimes signal every
    process of the group at once. The gateway then drains: its requests in flight finish on the workers, which it
    stops afterwards (`Shutdown`, or SIGKILL past the timeout). A worker that died of the same signal would cut
    every stream. The watchdog's SIGKILL and the gateway's death (the pipe closes) still end a worker.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
