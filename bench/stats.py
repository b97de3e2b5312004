"""From per-request token timestamps to one level's figures.

Throughput is the level's output tokens divided by its wall time (first request submitted to last token).
TTFT is first-token time minus submit time, per request; inter-token latency (ITL) is every gap between two
consecutive tokens of one request, pooled over the level's requests. Percentiles interpolate linearly between
the closest ranks (numpy's default). A step that yields several tokens at once contributes zero gaps: that is
what a streaming client sees.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class RequestTiming:
    """One request: when it was submitted and when each of its tokens arrived (seconds, one clock)."""

    submit: float
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.submit if self.token_times else None

    def gaps(self) -> list[float]:
        times = self.token_times
        return [later - earlier for earlier, later in itertools.pairwise(times)]


@dataclass(slots=True)
class LevelResult:
    """One system at one concurrency level. Latencies in seconds; None where there was nothing to measure."""

    system: str
    concurrency: int
    num_requests: int
    output_tokens: int
    wall_s: float
    throughput_tok_s: float
    ttft_s: dict[str, float | None]
    itl_s: dict[str, float | None]
    note: str = ""
    gateway_cpu_us_per_token: float | None = None  # the service's gateway process, from its CPU counters
    # The other processes of a service level, from their CPU counters: the worker processes (the gateway's
    # descendants) and the client processes. With the gateway's, they say how many cores the level kept busy.
    worker_cpu_us_per_token: float | None = None
    client_cpu_us_per_token: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LevelResult:
        return cls(**data)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation; None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{q}": percentile(values, q) for q in PERCENTILES}


def summarize(
    system: str, concurrency: int, timings: Iterable[RequestTiming], wall_s: float, note: str = ""
) -> LevelResult:
    """The level's figures from its requests' timings and its wall time."""
    timings = list(timings)
    if wall_s <= 0:
        raise ValueError(f"wall time must be positive, got {wall_s}")
    output_tokens = sum(len(t.token_times) for t in timings)
    ttfts = [t.ttft for t in timings if t.ttft is not None]
    gaps = [gap for t in timings for gap in t.gaps()]
    return LevelResult(
        system=system,
        concurrency=concurrency,
        num_requests=len(timings),
        output_tokens=output_tokens,
        wall_s=wall_s,
        throughput_tok_s=output_tokens / wall_s,
        ttft_s=percentiles(ttfts),
        itl_s=percentiles(gaps),
        note=note,
    )
