"""What Open-AutoGLM's phone agent sends, end to end: model "autoglm-phone-9b", temperature 0, top_p 0.85,
frequency_penalty 0.2. A real server (one CPU worker process) serves the tiny GLM checkpoint under two names with
served_model_name; greedy output under the penalties equals a decode loop written out over the transformers model,
token for token."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import grpc
import openai
import pytest

from autoglm_rpc.client import AutoglmError
from tests.support import ServerThread, server_settings

NAMES = ("autoglm-phone-9b", "glm-phone")
AGENT = {"temperature": 0.0, "top_p": 0.85, "frequency_penalty": 0.2}
PROMPTS = ["Open the settings app", "Tap the search box and type hello", "你好", "Swipe up twice, then wait."]


@pytest.fixture(scope="module")
def phone_server(glm_checkpoint: Path) -> Iterator[ServerThread]:
    server = ServerThread(server_settings(glm_checkpoint, served_model_name=NAMES, workers=1)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sdk(phone_server: ServerThread) -> openai.OpenAI:
    url = f"http://127.0.0.1:{phone_server.app.http.port}/v1"
    return openai.OpenAI(base_url=url, api_key="none", max_retries=0)


@cache
def _model(checkpoint: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint).eval()


def reference_decode(
    checkpoint: Path, prompt_ids: list[int], max_new_tokens: int, frequency: float = 0.0, presence: float = 0.0
) -> list[int]:
    """Greedy decoding written out: the whole sequence through the transformers model at every step, then
    OpenAI's penalties by hand over the tokens generated so far, then the argmax."""
    import torch

    model, ids, generated = _model(checkpoint), list(prompt_ids), []
    counts: torch.Tensor | None = None
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].float()  # [V]
        counts = torch.zeros_like(logits) if counts is None else counts
        token_id = int((logits - (frequency * counts + presence * (counts > 0))).argmax())
        counts[token_id] += 1
        ids.append(token_id)
        generated.append(token_id)
    return generated


def test_greedy_with_penalties_equals_a_reference_decode_loop(phone_server: ServerThread, glm_checkpoint: Path):
    """Four penalized requests and an unpenalized one at once (one batch), each by one of the served names."""
    penalties = [(0.2, 0.0), (-0.5, 0.0), (0.5, -1.0), (2.0, 2.0), (0.0, 0.0)]
    prompts = [*PROMPTS, PROMPTS[0]]
    with phone_server.client() as client, ThreadPoolExecutor(len(prompts)) as pool:
        futures = [
            pool.submit(
                client.generate, prompt, model=NAMES[i % 2], max_new_tokens=20, temperature=0.0, top_p=0.85,
                frequency_penalty=frequency, presence_penalty=presence, stopping={"ignore_eos": True},
                return_token_ids=True, timeout=120,
            )
            for i, (prompt, (frequency, presence)) in enumerate(zip(prompts, penalties, strict=True))
        ]  # fmt: skip
        replies = [future.result() for future in futures]
        prompt_ids = [list(client.tokenize(prompt).token_ids) for prompt in prompts]
    changed = 0
    for ids, (frequency, presence), reply in zip(prompt_ids, penalties, replies, strict=True):
        expected = reference_decode(glm_checkpoint, ids, 20, frequency, presence)
        assert list(reply.sequences[0].token_ids) == expected, (frequency, presence)
        assert reply.model == NAMES[0]
        changed += expected != reference_decode(glm_checkpoint, ids, 20)
    assert changed >= 2, "the penalties should change the tiny model's greedy tokens"


def test_the_agents_request_streams_over_the_openai_sdk(sdk: openai.OpenAI, phone_server: ServerThread) -> None:
    messages = [{"role": "user", "content": "Open WeChat and send 'on my way' to Li Lei"}]
    stream = sdk.chat.completions.create(
        model="autoglm-phone-9b", messages=messages, max_tokens=24, stream=True,
        stream_options={"include_usage": True}, **AGENT,
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert {chunk.model for chunk in chunks} == {"autoglm-phone-9b"}
    with phone_server.client() as client:  # the same request over gRPC, by the other name: the same text
        reply = client.generate(
            chat=[("user", messages[0]["content"])], model=NAMES[1], max_new_tokens=24, **AGENT, timeout=120
        )
    assert reply.sequences[0].text == text


def test_every_served_name_resolves_and_an_unknown_one_is_not_found(
    sdk: openai.OpenAI, phone_server: ServerThread
) -> None:
    assert [model.id for model in sdk.models.list().data] == list(NAMES)
    assert [sdk.models.retrieve(name).id for name in NAMES] == list(NAMES)
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("autoglm-phone")
    with pytest.raises(openai.NotFoundError) as not_found:
        sdk.completions.create(model="autoglm-phone", prompt="hi", max_tokens=2)
    assert not_found.value.code == "model_not_found"
    alias = sdk.completions.create(model=NAMES[1], prompt="hi", max_tokens=2, temperature=0)
    assert alias.model == NAMES[0] and alias.usage.completion_tokens > 0
    with phone_server.client() as client:
        (model,) = client.list_models().models
        assert (model.id, list(model.aliases)) == (NAMES[0], list(NAMES[1:]))
        assert model.defaults.HasField("frequency_penalty") and model.defaults.frequency_penalty == 0.0
        assert client.server_info().default_model == NAMES[0]
        with pytest.raises(AutoglmError) as caught:
            client.generate("hi", model="autoglm-phone", max_new_tokens=2)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND and caught.value.reason == "MODEL_NOT_FOUND"
