"""End to end: a real gRPC server on loopback, two real CPU worker processes, tiny checkpoints built here.

Greedy output is checked token for token against transformers' `model.generate` on the same checkpoint.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

from autoglm.v1 import types_pb2
from autoglm_rpc.client import AsyncClient
from tests.support import ServerThread

PROMPTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog.",
    "你好，世界！",
    "Emoji travel as four bytes: 😀 🚀",
    "A gateway routes requests to workers over pipes. Continuous batching lets requests join and leave.",
    "Ça va? Naïve café, crème brûlée",
]


@cache
def _hf(checkpoint: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint), AutoModelForCausalLM.from_pretrained(checkpoint).eval()


def hf_greedy(checkpoint: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    import torch

    _, model = _hf(checkpoint)
    with torch.no_grad():
        output = model.generate(
            torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=max_new_tokens, attention_mask=None
        )
    return output[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("server_name", ["glm_server", "llama_server"])
def test_concurrent_greedy_requests_equal_transformers_generate(
    server_name: str, request: pytest.FixtureRequest, glm_checkpoint: Path, llama_checkpoint: Path
) -> None:
    server: ServerThread = request.getfixturevalue(server_name)
    checkpoint = glm_checkpoint if server_name == "glm_server" else llama_checkpoint
    lengths = [24, 7, 31, 16, 12, 40]
    with server.client() as client, ThreadPoolExecutor(len(PROMPTS)) as pool:
        futures = [
            pool.submit(
                client.generate, prompt, max_new_tokens=n, temperature=0.0, return_token_ids=True, timeout=120
            )
            for prompt, n in zip(PROMPTS, lengths, strict=True)
        ]
        results = [future.result() for future in futures]
        for prompt, n, result in zip(PROMPTS, lengths, results, strict=True):
            prompt_ids = list(client.tokenize(prompt).token_ids)
            tokenizer, _ = _hf(checkpoint)
            assert prompt_ids == tokenizer(prompt).input_ids
            expected = hf_greedy(checkpoint, prompt_ids, n)
            sequence = result.sequences[0]
            assert list(sequence.token_ids) == expected, prompt
            assert sequence.text == tokenizer.decode(expected, skip_special_tokens=True)
            assert result.usage.prompt_tokens == len(prompt_ids)
            assert result.usage.completion_tokens == len(expected)


def test_stream_concatenation_equals_unary_text_and_decode(glm_server: ServerThread, glm_checkpoint: Path) -> None:
    tokenizer, _ = _hf(glm_checkpoint)
    with glm_server.client() as client:
        for prompt in PROMPTS[:4]:
            unary = client.generate(prompt, max_new_tokens=40, temperature=0.0, return_token_ids=True)
            messages = list(client.stream(prompt, max_new_tokens=40, temperature=0.0, return_token_ids=True))
            first, last = messages[0], messages[-1]
            assert first.prompt.prompt_tokens == unary.usage.prompt_tokens > 0
            assert first.finish_reason == types_pb2.FINISH_REASON_UNSPECIFIED
            assert all(not m.HasField("prompt") for m in messages[1:])
            assert all(m.finish_reason == types_pb2.FINISH_REASON_UNSPECIFIED for m in messages[:-1])
            assert last.finish_reason == unary.sequences[0].finish_reason != types_pb2.FINISH_REASON_UNSPECIFIED
            assert last.HasField("usage") and last.HasField("timing") and last.HasField("seed")
            streamed_ids = [i for m in messages for i in m.token_ids]
            assert streamed_ids == list(unary.sequences[0].token_ids)
            text = "".join(m.text for m in messages)
            assert text == unary.sequences[0].text == tokenizer.decode(streamed_ids, skip_special_tokens=True)
            assert last.usage.completion_tokens == len(streamed_ids)
            assert all(m.request_id == first.request_id for m in messages)


def test_seeded_sampling_repeats_and_seeds_differ(glm_server: ServerThread) -> None:
    options = {"max_new_tokens": 24, "temperature": 1.5, "top_k": 0, "return_token_ids": True}
    with glm_server.client() as client:
        first = client.generate("Hello", seed=7, **options)
        again = client.generate("Hello", seed=7, **options)
        other = client.generate("Hello", seed=8, **options)
        unseeded = client.generate("Hello", **options)
    assert first.seed == 7
    assert list(first.sequences[0].token_ids) == list(again.sequences[0].token_ids)
    assert list(first.sequences[0].token_ids) != list(other.sequences[0].token_ids)
    assert unseeded.seed != 0


def test_stop_sequence_is_honoured_and_stripped(glm_server: ServerThread) -> None:
    prompt = PROMPTS[1]
    with glm_server.client() as client:
        full = client.generate(prompt, max_new_tokens=48, temperature=0.0).sequences[0].text
        start = next(i for i in range(len(full) // 3, len(full) - 3) if "\ufffd" not in full[i : i + 3])
        stop = full[start : start + 3]
        cut = full.index(stop)
        stopped = client.generate(prompt, max_new_tokens=48, temperature=0.0, stop=[stop])
        kept = client.generate(
            prompt, max_new_tokens=48, temperature=0.0, stop=[stop], stopping={"include_stop_sequence": True}
        )
        streamed = list(client.stream(prompt, max_new_tokens=48, temperature=0.0, stop=[stop]))
    sequence = stopped.sequences[0]
    assert sequence.finish_reason == types_pb2.FINISH_REASON_STOP_SEQUENCE
    assert sequence.stop_sequence == stop
    assert sequence.text == full[:cut]
    assert kept.sequences[0].text == full[: cut + len(stop)]
    assert "".join(m.text for m in streamed) == full[:cut]
    assert streamed[-1].stop_sequence == stop


def test_async_client_streams(glm_server: ServerThread) -> None:
    import asyncio

    async def run() -> tuple[str, str]:
        async with AsyncClient(glm_server.target) as client:
            unary = await client.generate("Hello", max_new_tokens=10, temperature=0.0)
            chunks = [m.text async for m in client.stream("Hello", max_new_tokens=10, temperature=0.0)]
            return unary.sequences[0].text, "".join(chunks)

    unary_text, streamed_text = asyncio.run(run())
    assert unary_text == streamed_text


def test_chat_is_rendered_with_the_template(glm_server: ServerThread, glm_checkpoint: Path) -> None:
    tokenizer, _ = _hf(glm_checkpoint)
    messages = [{"role": "user", "content": "Hello there"}]
    with glm_server.client() as client:
        result = client.generate(chat=messages, max_new_tokens=8, temperature=0.0, return_token_ids=True)
    expected_prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected_prompt = list(getattr(expected_prompt, "input_ids", expected_prompt))
    assert result.usage.prompt_tokens == len(expected_prompt)
    assert list(result.sequences[0].token_ids) == hf_greedy(glm_checkpoint, expected_prompt, 8)
