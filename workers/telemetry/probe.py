"""The engine's hook for step tracing: a probe that sees the phases of one step. Standard library only.

`Engine.step` calls `probe.scheduled(batch)` once the scheduler has decided the step and `probe.executed()` once
the model has run and sampled. The engine holds `NULL_PROBE` (both calls do nothing) except during the steps that
`workers.telemetry.steps` traces, which swap in a recording probe for that one step.
"""

from __future__ import annotations

from typing import Any


class StepProbe:
    """Does nothing; subclasses record what they need. Called on the worker loop's thread only."""

    __slots__ = ()

    def scheduled(self, batch: Any) -> None:
        """The step's `ScheduledBatch` is known; the model has not run yet."""

    def executed(self) -> None:
        """The model has run and sampled; postprocessing (finishes, deltas) follows."""


NULL_PROBE = StepProbe()
