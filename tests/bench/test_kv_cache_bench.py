"""`python -m bench.kv_cache` end to end at a small size: the report's structure and its token counts (never
speed)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import kv_cache


def test_the_kv_cache_benchmark_compares_layouts_and_prefix_caching(tmp_path: Path, capsys) -> None:
    argv = ["--out", str(tmp_path), "--capacity-requests", "8", "--prefix-rounds", "1", "--conversations", "2"]
    assert kv_cache.main([*argv, "--turns", "2", "--threads", "1"]) == 0
    report = json.loads((tmp_path / "kv_cache.json").read_text())
    capacity = report["capacity"]
    assert (capacity["slotted"]["max_batch_size"], capacity["slotted"]["peak_running"]) == (2, 2)
    assert capacity["paged"]["peak_running"] == 8  # 8 requests of 96 tokens fit in 4,096 tokens at once
    # The prefix fills 93 blocks (1,488 tokens); the 94th holds its last 12 tokens and the distinct question.
    assert report["shared_prefix"]["cached_prompt_tokens"] == 3 * 1488
    off, on = report["agent"]
    assert off["prompt_tokens"] == on["prompt_tokens"] == off["prefilled_tokens"] > on["prefilled_tokens"]
    assert len(on["mean_ttft_s_per_turn"]) == 2
    assert "| paged | 64 | 8 |" in capsys.readouterr().out
