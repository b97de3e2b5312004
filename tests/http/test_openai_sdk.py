"""The official `openai` SDK against the HTTP API of a real server (the session's tiny GLM, real workers)."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.support import ServerThread

PROMPT = "The quick brown fox"
CHAT = [{"role": "user", "content": "Say something about foxes."}]


def _sdk(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.app.http.port}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def sdk(glm_server: ServerThread) -> openai.OpenAI:
    return _sdk(glm_server)


def test_models_lists_the_served_model(sdk: openai.OpenAI) -> None:
    models = sdk.models.list().data
    assert [m.id for m in models] == ["tiny-glm"]
    assert sdk.models.retrieve("tiny-glm").id == "tiny-glm"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("other")


def test_chat_streamed_and_not_give_the_same_text_and_usage(sdk: openai.OpenAI, glm_server: ServerThread) -> None:
    whole = sdk.chat.completions.create(model="tiny-glm", messages=CHAT, max_tokens=16, temperature=0)
    stream = sdk.chat.completions.create(
        model="tiny-glm", messages=CHAT, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert text == choice.message.content
    assert choice.finish_reason == "length" and whole.usage.completion_tokens == 16
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    with glm_server.client() as client:  # gRPC's chat: the same template, the same tokens
        reply = client.generate(chat=[("user", CHAT[0]["content"])], max_new_tokens=16, temperature=0.0)
    assert reply.sequences[0].text == text
    assert reply.usage.prompt_tokens == whole.usage.prompt_tokens


def test_a_completion_is_grpc_generate_for_text_or_ids(sdk: openai.OpenAI, glm_server: ServerThread) -> None:
    completion = sdk.completions.create(model="tiny-glm", prompt=PROMPT, max_tokens=12, temperature=0)
    with glm_server.client() as client:
        reply = client.generate(PROMPT, max_new_tokens=12, temperature=0.0)
        ids = list(client.tokenize(PROMPT).token_ids)
    assert completion.choices[0].text == reply.sequences[0].text
    assert completion.usage.prompt_tokens == len(ids)
    from_ids = sdk.completions.create(model="tiny-glm", prompt=ids, max_tokens=12, temperature=0)
    assert from_ids.choices[0].text == completion.choices[0].text
    streamed = sdk.completions.create(model="tiny-glm", prompt=PROMPT, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text


def test_seeds_repeat(sdk: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        reply = sdk.completions.create(prompt=PROMPT, model="tiny-glm", max_tokens=24, temperature=1.0, seed=seed)
        return reply.choices[0].text

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first


def test_stop_strings_end_the_text(sdk: openai.OpenAI) -> None:
    full = sdk.completions.create(model="tiny-glm", prompt=PROMPT, max_tokens=48, temperature=0).choices[0].text
    start = next(i for i in range(len(full) // 3, len(full) - 3) if "\ufffd" not in full[i : i + 3])
    stop = full[start : start + 3]
    stopped = sdk.completions.create(model="tiny-glm", prompt=PROMPT, max_tokens=48, temperature=0, stop=[stop])
    assert stopped.choices[0].text == full[: full.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    chat = sdk.chat.completions.create(model="tiny-glm", messages=CHAT, max_tokens=48, temperature=0, stop=stop)
    assert stop not in (chat.choices[0].message.content or "")


def test_logprobs_of_chat_and_completion(sdk: openai.OpenAI) -> None:
    chat = sdk.chat.completions.create(
        model="tiny-glm", messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens == 6
    for item in content:
        assert len(item.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert item.logprob == pytest.approx(max(t.logprob for t in item.top_logprobs))
    completion = sdk.completions.create(model="tiny-glm", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 6
    assert all(len(top) <= 2 for top in logprobs.top_logprobs) and all(lp <= 0 for lp in logprobs.token_logprobs)


def test_sixteen_concurrent_streams(glm_server: ServerThread, sdk: openai.OpenAI) -> None:
    prompts = [f"{PROMPT} number {i}" for i in range(16)]
    expected = [sdk.completions.create(model="tiny-glm", prompt=p, max_tokens=10, temperature=0) for p in prompts]

    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{glm_server.app.http.port}/v1", api_key="none")

        async def one(prompt: str) -> str:
            stream = await client.completions.create(
                model="tiny-glm", prompt=prompt, max_tokens=10, temperature=0, stream=True
            )
            return "".join([chunk.choices[0].text async for chunk in stream])

        try:
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            await client.close()

    assert asyncio.run(run()) == [e.choices[0].text for e in expected]


def test_client_mistakes_are_the_sdks_bad_request_and_not_found(sdk: openai.OpenAI) -> None:
    cases = [
        ({"temperature": -1}, "temperature"),
        ({"n": 2}, "n"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content[0]"),
        ({"messages": [{"content": "no role"}]}, "messages[0].role"),
    ]  # fmt: skip
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.chat.completions.create(**{"model": "tiny-glm", "messages": CHAT, **extra})
        assert caught.value.param == param, caught.value.message
        assert caught.value.body["message"].startswith(param)  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.completions.create(model="tiny-glm", prompt="x", max_tokens=10_000)
    assert caught.value.code == "prompt_too_long"
    with pytest.raises(openai.NotFoundError) as not_found:
        sdk.chat.completions.create(model="gpt-4", messages=CHAT)
    assert not_found.value.code == "model_not_found"
