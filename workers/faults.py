"""Test-only fault injection: a worker that crashes on purpose, so tests can prove how the gateway copes.

Armed only by the environment variable `AUTOGLM_TEST_FAULT`, which a worker process reads once, when it starts
(`entry.main`). Nothing a client sends can arm it, and the gateway never reads it: a server started without the
variable has no fault path at all. The value is a comma-separated list of `<fault>@<worker_id>` entries, such as
`segfault-on-submit@0`:

- `segfault-on-submit`: the worker reads address 0 (a real SIGSEGV, no Python exception) when a `Submit`
  arrives, before it produces any token for it.
- `oom-at-load`: the worker raises `MemoryError` before loading the model, as a load that runs out of memory
  does; it reports `WorkerFailed` and exits 1.

Standard library only: `entry` imports it before torch.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn

logger = logging.getLogger(__name__)

ENV_VAR = "AUTOGLM_TEST_FAULT"
FAULTS = ("segfault-on-submit", "oom-at-load")


@dataclass(frozen=True, slots=True)
class Faults:
    """The faults armed in this worker process; all off by default."""

    segfault_on_submit: bool = False
    oom_at_load: bool = False

    @classmethod
    def from_environ(cls, worker_id: int, environ: Mapping[str, str] | None = None) -> Faults:
        """The faults `AUTOGLM_TEST_FAULT` arms for `worker_id`; ValueError on an entry it cannot parse."""
        environ = os.environ if environ is None else environ
        armed: set[str] = set()
        for entry in filter(None, (item.strip() for item in environ.get(ENV_VAR, "").split(","))):
            fault, _, target = entry.partition("@")
            if fault not in FAULTS or not target.isdigit():
                raise ValueError(f"{ENV_VAR}: {entry!r} is not <fault>@<worker_id> with a fault in {FAULTS}")
            if int(target) == worker_id:
                armed.add(fault)
        faults = cls(segfault_on_submit="segfault-on-submit" in armed, oom_at_load="oom-at-load" in armed)
        if armed:
            logger.warning("worker %d: test faults armed by %s: %s", worker_id, ENV_VAR, ", ".join(sorted(armed)))
        return faults


def segfault() -> NoReturn:
    """Crash the process with SIGSEGV, as a bug in native code would."""
    ctypes.string_at(0)
    raise AssertionError("reading address 0 did not crash")  # never reached
