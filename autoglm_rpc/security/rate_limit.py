"""Per-key rate limits: requests per minute and tokens per minute, as token buckets.

Each key (its owner name; all callers share one anonymous bucket when authentication is off) has a bucket per
limit that holds at most a minute's allowance and refills continuously at limit/60 per second, so a burst of a
whole minute's allowance is allowed and a steady rate of the limit is sustained.

Requests: Generate, GenerateStream and Tokenize each take one. Tokens: a generation reserves its prompt tokens
plus its `max_new_tokens` when it is admitted; when it ends, the tokens it did not generate are given back, so
what a key is charged is prompt + generated tokens. A caller over a limit gets RESOURCE_EXHAUSTED / RATE_LIMITED
with a RetryInfo saying when the bucket will hold enough; a request bigger than a whole minute's allowance gets
no RetryInfo (waiting cannot help). All methods run on the event loop thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from autoglm_rpc.core.errors import RateLimited

ANONYMOUS = "anonymous"


@dataclass
class TokenBucket:
    """`capacity` units, refilled at `rate` per second; starts full."""

    capacity: float
    rate: float
    level: float
    updated: float

    def take(self, amount: float, now: float) -> float | None:
        """Take `amount` and return 0.0, or take nothing and return the seconds until it fits (None: never)."""
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        if amount > self.capacity:
            return None
        if amount <= self.level:
            self.level -= amount
            return 0.0
        return (amount - self.level) / self.rate

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """Token buckets per key for requests and tokens per minute; a limit of 0 is off."""

    def __init__(
        self, requests_per_minute: int = 0, tokens_per_minute: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limits = {"requests": requests_per_minute, "tokens": tokens_per_minute}
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    @property
    def is_active(self) -> bool:
        return any(self._limits.values())

    def admit_request(self, principal: str | None) -> None:
        """Count one request against the key; raise RateLimited when it is over its requests per minute."""
        self._take("requests", principal, 1)

    def reserve_tokens(self, principal: str | None, amount: int) -> None:
        """Reserve `amount` tokens for a generation; raise RateLimited when the key has not enough left."""
        self._take("tokens", principal, amount)

    def refund_tokens(self, principal: str | None, amount: int) -> None:
        """Give back reserved tokens that were not used."""
        bucket = self._buckets.get(("tokens", principal or ANONYMOUS))
        if bucket is not None and amount > 0:
            bucket.give(amount)

    def _take(self, kind: str, principal: str | None, amount: int) -> None:
        limit = self._limits[kind]
        if not limit:
            return
        key = principal or ANONYMOUS
        now = self._clock()
        bucket = self._buckets.get((kind, key))
        if bucket is None:
            bucket = self._buckets[(kind, key)] = TokenBucket(limit, limit / 60.0, limit, now)
        wait = bucket.take(amount, now)
        if wait == 0.0:
            return
        if wait is None:
            raise RateLimited(
                f"rate limit: this request needs {amount} {kind}, more than the {limit} {kind} per minute "
                f"allowed to {key!r}",
                None,
            )
        raise RateLimited(f"rate limit: {key!r} is over {limit} {kind} per minute; retry in {wait:.1f}s", wait)
