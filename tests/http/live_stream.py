"""A live gRPC stream beside an attack on the HTTP face: how long it paused, against a baseline it set itself.

`LiveStream` runs GenerateStream calls back to back in a thread and records when each message arrived.
`longest_pause(since, until)` is the longest wait between two messages (or a window's edge and a message) in
that window. A test measures the stream alone first (the baseline, on the same loaded machine), then beside
the attack, and bounds the second by the first: `allowed_pause(baseline)`.
"""

from __future__ import annotations

import itertools
import threading
import time

import grpc

from autoglm.v1 import generation_pb2, generation_pb2_grpc

# Generous for a shared 2-core machine: five times the stream's own worst pause, and never under half a second.
PAUSE_FACTOR = 5.0
MIN_ALLOWED_PAUSE = 0.5


def allowed_pause(baseline: float) -> float:
    return max(MIN_ALLOWED_PAUSE, PAUSE_FACTOR * baseline)


class LiveStream(threading.Thread):
    """GenerateStream calls back to back against `target` until `stop()`; `arrivals` are monotonic times."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.arrivals: list[float] = []
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        request = generation_pb2.GenerateStreamRequest(
            prompt="a stream beside the attack", stopping={"max_new_tokens": 400, "ignore_eos": True}
        )
        try:
            with grpc.insecure_channel(self.target) as channel:
                stub = generation_pb2_grpc.GenerationServiceStub(channel)
                while not self._stop_event.is_set():
                    for _ in stub.GenerateStream(request, timeout=120):
                        self.arrivals.append(time.monotonic())
                        if self._stop_event.is_set():
                            break
        except BaseException as error:  # reported by the test
            self.error = error

    def __enter__(self) -> LiveStream:
        self.start()
        deadline = time.monotonic() + 60
        while len(self.arrivals) < 5 and self.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(self.arrivals) < 5:
            self.stop()
            raise AssertionError(f"the live stream did not start: {self.error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(60)

    def longest_pause(self, since: float, until: float) -> float:
        """The longest time without a message between `since` and `until` (both edges count)."""
        inside = [t for t in list(self.arrivals) if since <= t <= until]
        edges = [since, *inside, until]
        return max(later - earlier for earlier, later in itertools.pairwise(edges))

    def baseline(self, seconds: float = 1.5) -> float:
        """The longest pause of the stream alone over the next `seconds`."""
        since = time.monotonic()
        time.sleep(seconds)
        return self.longest_pause(since, time.monotonic())
