"""End to end for a sliding-window family: a tiny Gemma 2 checkpoint (windows of 8 tokens on every other layer,
logit soft-caps) served through a real gRPC server with real CPU workers, as `make run MODEL=<dir>` serves it.

Greedy output equals transformers' `generate()` token for token for concurrent requests longer than the window.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.test_generation import PROMPTS, hf_greedy
from tests.support import ServerThread, server_settings
from workers.model.checkpoints import TinyModelSpec, build_checkpoint


@pytest.fixture(scope="module")
def gemma2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = TinyModelSpec(architecture="gemma2", seed=21, sliding_window=8)
    return build_checkpoint(tmp_path_factory.mktemp("gemma2"), spec)


@pytest.fixture(scope="module")
def gemma2_server(gemma2_checkpoint: Path) -> Iterator[ServerThread]:
    server = ServerThread(server_settings(gemma2_checkpoint, model_id="tiny-gemma2", workers=1)).start()
    yield server
    server.stop()


def test_gemma2_serves_and_equals_generate(gemma2_server: ServerThread, gemma2_checkpoint: Path) -> None:
    lengths = [20, 9, 24, 16]
    with gemma2_server.client() as client, ThreadPoolExecutor(len(lengths)) as pool:
        (model,) = client.list_models().models
        assert (model.architecture, model.max_context_tokens) == ("Gemma2ForCausalLM", 512)
        futures = [
            pool.submit(client.generate, prompt, max_new_tokens=n, temperature=0.0, return_token_ids=True)
            for prompt, n in zip(PROMPTS, lengths, strict=False)
        ]
        for prompt, n, future in zip(PROMPTS, lengths, futures, strict=False):
            prompt_ids = list(client.tokenize(prompt).token_ids)
            assert len(prompt_ids) + n > 8  # the window hides part of the context
            assert list(future.result(timeout=120).sequences[0].token_ids) == hf_greedy(
                gemma2_checkpoint, prompt_ids, n
            )
