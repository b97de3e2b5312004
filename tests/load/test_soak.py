"""The soak's short version, in the suite: 16 streams for 20 s against 2 CPU workers, one of them killed and
restarted on the way (`make soak` runs the long one)."""

from __future__ import annotations

from pathlib import Path

from tests.load.soak import SoakOptions, run_soak


def test_short_soak_with_a_worker_killed(tmp_path: Path) -> None:
    options = SoakOptions(duration=20.0, streams=16, warmup=6.0, kill_at=0.3, deadline=45.0)
    report = run_soak(options, tmp_path)
    assert not report.failures, report.text()
    assert report.outcomes["OK"] > 20
