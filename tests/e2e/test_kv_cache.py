"""The paged KV cache through a real server: a 256-token cache serves 16 concurrent requests of a 256-token
context (a slotted cache would hold one), outputs do not depend on the batch, and GetServerInfo and the metrics
report blocks and prefix-cache hits."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ServerThread, server_settings

PROMPTS = [f"Hi {i}" for i in range(16)]
SHARED = "An agent resends its whole history on every turn of the conversation. " * 4


@pytest.fixture(scope="module")
def paged_server(glm_checkpoint: Path) -> Iterator[ServerThread]:
    settings = server_settings(
        glm_checkpoint, workers=1, max_seq_len=256, kv_cache_tokens=256, max_batch_size=16,
        max_num_batched_tokens=256, metrics_port=0, model_id="tiny-glm",
    )  # fmt: skip
    server = ServerThread(settings).start()
    yield server
    server.stop()


def test_sixteen_requests_share_a_cache_of_one_context_and_match_their_solo_runs(paged_server) -> None:
    with paged_server.client() as client:
        alone = [
            client.generate(prompt, max_new_tokens=6, return_token_ids=True, timeout=120) for prompt in PROMPTS[:4]
        ]
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            together = list(
                pool.map(
                    lambda p: client.generate(p, max_new_tokens=6, return_token_ids=True, timeout=300), PROMPTS
                )
            )
        info = client.server_info()
    solo_ids = [list(response.sequences[0].token_ids) for response in alone]
    assert [list(response.sequences[0].token_ids) for response in together[:4]] == solo_ids
    assert all(response.sequences[0].token_ids for response in together)
    (worker,) = info.workers
    assert (worker.kv_cache_blocks_total, worker.kv_cache_block_size) == (16, 16)
    assert info.prefix_caching_enabled


def test_a_repeated_prefix_is_served_from_the_cache_and_reported(paged_server) -> None:
    with paged_server.client() as client:
        before = client.server_info().cached_prompt_tokens
        first = client.generate(SHARED + "First question?", max_new_tokens=4, return_token_ids=True, timeout=120)
        second = client.generate(SHARED + "First question?", max_new_tokens=4, return_token_ids=True, timeout=120)
        info = client.server_info()
    assert list(first.sequences[0].token_ids) == list(second.sequences[0].token_ids)
    assert info.cached_prompt_tokens - before >= 16  # at least one full block of the prompt was reused
    assert 0 < info.workers[0].prefix_cache_hit_rate <= 1
    port = paged_server.app.telemetry.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        families = {family.name: family for family in text_string_to_metric_families(response.read().decode())}
    assert (
        families["autoglm_kv_cache_blocks_used"].samples[0].value
        + families["autoglm_kv_cache_blocks_free"].samples[0].value
        == 16
    )
    hits = families["autoglm_prefix_cache_hit_tokens"].samples[0].value
    assert hits >= 16 and families["autoglm_prefix_cache_prompt_tokens"].samples[0].value > hits
    assert 0 < families["autoglm_prefix_cache_hit_ratio"].samples[0].value < 1
    assert families["autoglm_kv_cache_preemptions"].samples[0].value >= 0
