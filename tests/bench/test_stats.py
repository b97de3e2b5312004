"""Percentiles and a level's figures from request timings."""

from __future__ import annotations

import pytest

from bench.stats import RequestTiming, percentile, percentiles, summarize


def test_percentile_interpolates_linearly_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_none_and_out_of_range_is_an_error() -> None:
    assert percentile([], 50) is None
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 101)


def test_summarize_counts_tokens_and_measures_ttft_and_gaps() -> None:
    timings = [
        RequestTiming(submit=0.0, token_times=[0.5, 0.6, 0.8]),  # TTFT 0.5, gaps 0.1, 0.2
        RequestTiming(submit=1.0, token_times=[1.2, 1.2, 1.5]),  # TTFT 0.2, gaps 0.0 (same step), 0.3
    ]
    result = summarize("engine", 2, timings, wall_s=2.0)
    assert (result.system, result.concurrency, result.num_requests) == ("engine", 2, 2)
    assert result.output_tokens == 6
    assert result.throughput_tok_s == pytest.approx(3.0)
    assert result.ttft_s["p50"] == pytest.approx(0.35)
    assert result.itl_s["p50"] == pytest.approx(0.15)
    assert result.itl_s["p99"] == pytest.approx(0.297)


def test_summarize_without_tokens_reports_no_latency() -> None:
    result = summarize("service", 1, [RequestTiming(submit=0.0)], wall_s=1.0)
    assert result.output_tokens == 0
    assert result.ttft_s["p50"] is None and result.itl_s["p90"] is None
    with pytest.raises(ValueError, match="wall time"):
        summarize("service", 1, [], wall_s=0.0)
