"""Open-AutoGLM's phone agent against a real server serving GLM-4.1V (AutoGLM-Phone-9B's architecture, the tiny
checkpoint, one CPU worker process): a multi-step conversation over the openai SDK, streamed, with the agent's
sampling options and the images stripped from earlier turns, whose history the prefix cache serves step after
step; the same request over gRPC with the image's bytes; greedy output equal to transformers' `generate()` on
the same messages, token for token."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch

from autoglm.v1 import generation_pb2, generation_pb2_grpc, model_pb2, model_pb2_grpc, types_pb2
from tests.doc_blocks import block
from tests.support import ServerThread, server_settings
from tests.workers.images import VisionPrompts, image_file
from workers.protocol import SamplingParams, StoppingParams, Submit

SERVED = "autoglm-phone-9b"
AGENT = {"temperature": 0.0, "top_p": 0.85, "frequency_penalty": 0.2}
SYSTEM = "You operate an Android phone for the user. Think in <think></think>, act in <answer>do(...)</answer>."
TASKS = ["Open the settings app", "Tap Wi-Fi", "Turn Wi-Fi on"]
SCREENS = [image_file(150, 120, seed=10 + step) for step in range(len(TASKS))]  # 20 image tokens each


@pytest.fixture(scope="module")
def server(glm4v_checkpoint: Path) -> Iterator[ServerThread]:
    # Prefill chunks of 32 tokens: an image's 20 tokens are split across two chunks in most prompts.
    settings = server_settings(glm4v_checkpoint, served_model_name=(SERVED,), workers=1, max_num_batched_tokens=32)
    server = ServerThread(settings).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sdk(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.app.http.port}/v1", api_key="none", max_retries=0)


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def agent_messages(step: int, answers: list[str]) -> list[dict]:
    """What the agent sends at `step`: its system prompt, the earlier turns with their images stripped (user text
    and the assistant's answers), and the newest screenshot with the task."""
    messages: list[dict] = [{"role": "system", "content": SYSTEM}]
    for earlier in range(step):
        messages.append({"role": "user", "content": [{"type": "text", "text": TASKS[earlier]}]})
        messages.append({"role": "assistant", "content": answers[earlier]})
    newest = [
        {"type": "image_url", "image_url": {"url": _data_url(SCREENS[step])}},
        {"type": "text", "text": TASKS[step]},
    ]
    return [*messages, {"role": "user", "content": newest}]


def _cached_prompt_tokens(server: ServerThread) -> int:
    with server.channel() as channel:
        info = model_pb2_grpc.ModelServiceStub(channel).GetServerInfo(model_pb2.GetServerInfoRequest(), timeout=30)
    return int(info.cached_prompt_tokens)


def test_a_multi_step_agent_conversation_streams_and_reuses_its_history(sdk: openai.OpenAI, server: ServerThread):
    answers: list[str] = []
    cached: list[int] = []
    for step in range(len(TASKS)):
        messages = agent_messages(step, answers)
        before = _cached_prompt_tokens(server)
        stream = sdk.chat.completions.create(
            model=SERVED, messages=messages, max_tokens=8, stream=True, stream_options={"include_usage": True},
            **AGENT,  # type: ignore[arg-type]
        )  # fmt: skip
        text, usage, finish = "", None, None
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        cached.append(_cached_prompt_tokens(server) - before)
        assert usage is not None and 1 <= usage.completion_tokens <= 8 and finish in ("stop", "length")
        assert usage.prompt_tokens > 20  # the screenshot's image tokens are counted
        whole = sdk.chat.completions.create(model=SERVED, messages=messages, max_tokens=8, **AGENT)  # type: ignore[arg-type]
        assert whole.choices[0].message.content == text  # greedy: the stream and the whole answer agree
        answers.append(text)
    # Step 1 starts with the system prompt step 0 prefilled; step 2 also with the turns step 1 prefilled.
    assert cached[1] > 0 and cached[2] > cached[1], cached


def test_grpc_with_image_bytes_equals_generate_and_the_openai_face(
    sdk: openai.OpenAI, server: ServerThread, glm4v_checkpoint: Path
) -> None:
    from transformers import AutoModelForImageTextToText

    screen = SCREENS[0]
    user = types_pb2.ChatMessage(
        role="user",
        parts=[types_pb2.ContentPart(image=types_pb2.Image(data=screen, media_type="image/png")),
               types_pb2.ContentPart(text=TASKS[0])],
    )  # fmt: skip
    request = generation_pb2.GenerateRequest(
        model=SERVED,
        chat=types_pb2.ChatInput(messages=[types_pb2.ChatMessage(role="system", content=SYSTEM), user]),
        sampling=types_pb2.SamplingOptions(temperature=0.0),
        stopping=types_pb2.StopOptions(max_new_tokens=10, ignore_eos=True),
        output=types_pb2.OutputOptions(return_token_ids=True),
    )
    with server.channel() as channel:
        reply = generation_pb2_grpc.GenerationServiceStub(channel).Generate(request, timeout=120)

    prompts = VisionPrompts(glm4v_checkpoint)
    image = prompts.image(screen)
    rendered = prompts.tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM},
         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TASKS[0]}]}],
        add_generation_prompt=True,
    )["input_ids"]  # fmt: skip
    prompt_ids: list[int] = []
    for token_id in rendered:
        prompt_ids.extend([token_id] * image.num_tokens if token_id == prompts.image_token_id else [token_id])
    submit = Submit(
        "reference", tuple(prompt_ids), SamplingParams(), StoppingParams(max_new_tokens=10), images=(image,)
    )
    model = AutoModelForImageTextToText.from_pretrained(glm4v_checkpoint, dtype=torch.float32).eval()
    expected = prompts.reference(model, submit)

    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert list(reply.sequences[0].token_ids) == expected
    http = sdk.chat.completions.create(
        model=SERVED,
        messages=[{"role": "system", "content": SYSTEM},
                  {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(screen)}},
                                               {"type": "text", "text": TASKS[0]}]}],
        max_tokens=10, temperature=0, extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert http.choices[0].message.content == reply.sequences[0].text
    assert http.usage is not None and http.usage.prompt_tokens == len(prompt_ids)


def _live(text: str, server: ServerThread) -> str:
    return text.replace("http://localhost:8000", f"http://127.0.0.1:{server.app.http.port}")


def test_the_readme_image_chat_with_curl_answers(server: ServerThread, tmp_path: Path) -> None:
    (tmp_path / "screenshot.png").write_bytes(SCREENS[0])
    script = _live(block("README.md", "image-chat-curl", "sh"), server)
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["model"] == SERVED and body["usage"]["prompt_tokens"] > 20, body  # the image's tokens counted
    assert body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] >= 1


def test_the_readme_image_chat_with_the_sdk_streams(server: ServerThread, tmp_path: Path) -> None:
    (tmp_path / "screenshot.png").write_bytes(SCREENS[0])
    code = _live(block("README.md", "image-chat-sdk", "python"), server)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
