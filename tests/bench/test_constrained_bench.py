"""`python -m bench.constrained` end to end at a small size: both kinds produce the same tokens, the report's
structure (never speed)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import constrained


def test_the_constrained_benchmark_runs_both_kinds_alike(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--streams", "1", "3", "--prompt-len", "8", "--new-tokens", "6"]
    assert constrained.main([*argv, "--repeats", "1"]) == 0
    report = json.loads((tmp_path / "constrained.json").read_text())
    assert [level["streams"] for level in report["levels"]] == [1, 3]
    for level in report["levels"]:
        assert level["free"]["tokens"] == level["constrained"]["tokens"] == 6 * level["streams"]
        assert level["constrained"]["mask_fill_ms"] > 0 and "mask_fill_ms" not in level["free"]
