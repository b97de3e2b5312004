"""The workload: deterministic prompts in range, whole waves per level, level parsing, stream splitting."""

from __future__ import annotations

import pytest

from bench.service import split_streams
from bench.workload import Workload, parse_levels


def _workload(**overrides: object) -> Workload:
    values: dict[str, object] = {
        "prompt_len": 16,
        "new_tokens": 4,
        "concurrency": (1, 4, 16),
        "token_low": 4,
        "token_high": 100,
        "min_requests": 6,
    }
    return Workload(**(values | overrides))  # type: ignore[arg-type]


def test_prompts_are_deterministic_in_range_and_of_the_given_length() -> None:
    workload = _workload()
    prompts = workload.prompts(5)
    assert prompts == _workload().prompts(5)
    assert prompts[:3] == workload.prompts(3)  # a prefix: every process sees the same request i
    assert all(len(p) == 16 and all(4 <= t < 100 for t in p) for p in prompts)
    assert prompts != _workload(seed=1).prompts(5)


def test_requests_per_level_are_whole_waves_and_at_least_the_minimum() -> None:
    workload = _workload()
    assert workload.requests_for_level(1) == 6
    assert workload.requests_for_level(4) == 8
    assert workload.requests_for_level(16) == 16
    assert workload.max_seq_len == 16 + 4 + 8


def test_round_trip_through_a_dict() -> None:
    workload = _workload()
    assert Workload.from_dict(workload.to_dict()) == workload


@pytest.mark.parametrize(
    "overrides",
    [{"prompt_len": 0}, {"concurrency": ()}, {"concurrency": (0, 2)}, {"token_low": 100}, {"min_requests": 0}],
)
def test_bad_workloads_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _workload(**overrides)


def test_parse_levels() -> None:
    assert parse_levels("64,1, 16,16") == (1, 16, 64)
    for bad in ("", "a,b", "0,4"):
        with pytest.raises(ValueError, match="concurrency"):
            parse_levels(bad)


def test_split_streams_covers_every_request_once() -> None:
    shares = split_streams(concurrency=5, num_requests=10, client_processes=2)
    assert shares == [(3, 0, 6), (2, 6, 10)]
    assert split_streams(concurrency=1, num_requests=4, client_processes=4) == [(1, 0, 4)]
