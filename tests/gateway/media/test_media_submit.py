"""A chat with images to the worker's `Submit`, on a gateway-only GLM-4.1V directory (tokenizer, template,
config, preprocessor config; no weights, no worker): prompt_ids hold each image as its run of image tokens where
transformers' template and processor put it, `Submit.images` the files in order, and both faces build the same."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from PIL import Image
from transformers import PreTrainedTokenizerFast
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

from autoglm.v1 import generation_pb2, types_pb2
from autoglm_rpc.core.errors import ImageOverflowsContext, InvalidParameter
from autoglm_rpc.core.frontend import Frontend, ServedModel
from autoglm_rpc.core.requests import GenerationRequest, RequestLimits
from autoglm_rpc.grpc_api import convert as grpc_convert
from autoglm_rpc.media.vision import read_vision_spec
from autoglm_rpc.openai_api import convert as http_convert
from autoglm_rpc.openai_api import schemas
from autoglm_rpc.openai_api.errors import service_error_body
from autoglm_rpc.pool.pool import WorkerPool
from autoglm_rpc.text.checkpoint import read_checkpoint_facts
from autoglm_rpc.text.tokenizer import TextTokenizer
from tests.gateway.media.vision_files import (
    PREPROCESSOR,
    STRING_CHAT_TEMPLATE,
    build_vision_files,
    data_url,
    image_bytes,
)
from workers.protocol import Submit, WorkerConfig

SCREEN = image_bytes(1080, 2400)
ICON = image_bytes(64, 48, "JPEG")


def _frontend(path: Path, max_context: int = 8192) -> Frontend:
    tokenizer = TextTokenizer.from_dir(path)
    served = ServedModel(
        model_id="glm4v-tiny", source=str(path), tokenizer=tokenizer, facts=read_checkpoint_facts(path),
        max_context_tokens=max_context, default_max_new_tokens=16, vision=read_vision_spec(path, tokenizer),
    )  # fmt: skip
    pool = WorkerPool([WorkerConfig(worker_id=0, model_path=str(path), model_id="glm4v-tiny")])
    return Frontend(served, pool)


@pytest.fixture(scope="module")
def glm4v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vision_files(tmp_path_factory.mktemp("glm4v"))


def _agent_messages(*images: bytes) -> list[dict]:
    """The phone agent's shape: earlier turns text only, the newest user message images then text."""
    newest = [{"type": "image_url", "image_url": {"url": data_url(image)}} for image in images]
    return [
        {"role": "system", "content": "You operate a phone."},
        {"role": "user", "content": "Open settings"},
        {"role": "assistant", "content": 'do(action="Launch", app="Settings")'},
        {"role": "user", "content": [*newest, {"type": "text", "text": "** Screen Info **"}]},
    ]


def _submit(frontend: Frontend, request: GenerationRequest) -> Submit:
    async def run() -> Submit:
        images = await frontend.images.prepare(request.prompt, frontend.model.model_id)
        return frontend.resolve(request, None, None, images)

    return asyncio.run(run())


def _http_request(messages: list[dict], **extra: object) -> GenerationRequest:
    body = schemas.ChatCompletionRequest(model="glm4v-tiny", messages=messages, **extra)
    return http_convert.chat_request(body, RequestLimits())


def _expected_ids(path: Path, messages: list[dict], images: list[bytes]) -> list[int]:
    """transformers' way: the template over content lists with {"type": "image"}, then each <|image|> repeated
    grid t*h*w / merge**2 times by the processor's grid (Glm4vProcessor.replace_image_token)."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    as_transformers = [
        {**m, "content": [{"type": "image"} if p["type"] == "image_url" else p for p in m["content"]]}
        if isinstance(m["content"], list) else m
        for m in messages
    ]  # fmt: skip
    text = tokenizer.apply_chat_template(as_transformers, tokenize=False, add_generation_prompt=True)
    processor = Glm4vImageProcessorPil(**{k: v for k, v in PREPROCESSOR.items() if k != "image_processor_type"})
    pil = [Image.open(__import__("io").BytesIO(data)).convert("RGB") for data in images]
    grids = processor(images=pil, return_tensors="np")["image_grid_thw"]
    for t, h, w in grids:
        text = text.replace("<|image|>", "<|placeholder|>" * int(t * h * w // 4), 1)
    text = text.replace("<|placeholder|>", "<|image|>")
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_the_agents_request_becomes_a_submit_with_its_image_runs(glm4v_dir: Path) -> None:
    frontend = _frontend(glm4v_dir)
    messages = _agent_messages(SCREEN, ICON)
    submit = _submit(frontend, _http_request(messages, max_tokens=8))
    assert list(submit.prompt_ids) == _expected_ids(glm4v_dir, messages, [SCREEN, ICON])
    spec = frontend.model.vision
    assert spec is not None
    counts = [spec.num_tokens(1080, 2400), spec.num_tokens(64, 48)]
    assert [(i.data, i.media_type, i.num_tokens) for i in submit.images] == [
        (SCREEN, "image/png", counts[0]), (ICON, "image/jpeg", counts[1]),
    ]  # fmt: skip
    assert submit.prompt_ids.count(spec.image_token_id) == sum(counts)
    tokenized = asyncio.run(frontend.tokenize(_http_request(messages).prompt))
    assert tokenized == list(submit.prompt_ids)  # Tokenize and usage count the image tokens too


def test_grpc_parts_build_the_same_submit(glm4v_dir: Path) -> None:
    frontend = _frontend(glm4v_dir)
    messages = _agent_messages(SCREEN)
    chat = types_pb2.ChatInput(
        messages=[
            types_pb2.ChatMessage(role="system", content="You operate a phone."),
            types_pb2.ChatMessage(role="user", content="Open settings"),
            types_pb2.ChatMessage(role="assistant", content=messages[2]["content"]),
            types_pb2.ChatMessage(
                role="user",
                parts=[
                    types_pb2.ContentPart(image=types_pb2.Image(data=SCREEN, media_type="image/png")),
                    types_pb2.ContentPart(text="** Screen Info **"),
                ],
            ),
        ]
    )
    request = grpc_convert.generation_request(generation_pb2.GenerateRequest(chat=chat))
    via_grpc, via_http = _submit(frontend, request), _submit(frontend, _http_request(messages))
    assert via_grpc.prompt_ids == via_http.prompt_ids and via_grpc.images == via_http.images


def test_grpc_refuses_content_with_parts_and_an_empty_part() -> None:
    both = types_pb2.ChatMessage(role="user", content="hi", parts=[types_pb2.ContentPart(text="x")])
    with pytest.raises(InvalidParameter, match="set content or parts, not both") as refused:
        grpc_convert.chat_prompt(types_pb2.ChatInput(messages=[both]), "chat")
    assert refused.value.field == "chat.messages[0]"
    empty = types_pb2.ChatMessage(role="user", parts=[types_pb2.ContentPart(text="a"), types_pb2.ContentPart()])
    with pytest.raises(InvalidParameter, match="set text or image") as unset:
        grpc_convert.chat_prompt(types_pb2.ChatInput(messages=[empty]), "chat")
    assert unset.value.field == "chat.messages[0].parts[1]"
    texts = types_pb2.ChatMessage(
        role="user", parts=[types_pb2.ContentPart(text="a"), types_pb2.ContentPart(text="b")]
    )
    (message,) = grpc_convert.chat_prompt(types_pb2.ChatInput(messages=[texts]), "chat").messages
    assert (message.content, message.parts) == ("ab", ())
    many = types_pb2.ChatMessage(role="user", parts=[types_pb2.ContentPart(text="a")] * 1025)
    with pytest.raises(InvalidParameter, match="at most 1024 parts") as too_many:
        grpc_convert.chat_prompt(types_pb2.ChatInput(messages=[many]), "chat")
    assert too_many.value.field == "chat.messages[0].parts"


def test_an_image_overflowing_the_context_is_named(glm4v_dir: Path) -> None:
    frontend = _frontend(glm4v_dir, max_context=1000)
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(ICON)}},
        {"type": "image_url", "image_url": {"url": data_url(SCREEN)}},
    ]}]  # fmt: skip
    with pytest.raises(ImageOverflowsContext, match="inside this image") as overflow:
        _submit(frontend, _http_request(messages, max_tokens=4))
    assert (overflow.value.field, overflow.value.reason) == ("messages[0].content[1]", "PROMPT_TOO_LONG")
    status, body, _ = service_error_body(overflow.value)
    assert status == 400 and body["error"]["param"] == "messages[0].content[1]"


def test_a_string_only_template_gets_the_image_placeholder(tmp_path: Path) -> None:
    path = build_vision_files(tmp_path / "string", chat_template=STRING_CHAT_TEMPLATE)
    frontend = _frontend(path)
    assert frontend.images.content_format == "string"
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "look: "}, {"type": "image_url", "image_url": {"url": data_url(ICON)}},
    ]}]  # fmt: skip
    submit = _submit(frontend, _http_request(messages))
    tokenizer = frontend.model.tokenizer
    run = [frontend.model.vision.image_token_id] * submit.images[0].num_tokens  # type: ignore[union-attr]
    expected = tokenizer.encode("<|user|>\nlook: <|begin_of_image|>", add_special_tokens=False)
    expected += run + tokenizer.encode("<|end_of_image|><|assistant|>\n", add_special_tokens=False)
    assert list(submit.prompt_ids) == expected


def test_text_that_spells_the_image_token_is_refused(glm4v_dir: Path) -> None:
    frontend = _frontend(glm4v_dir)
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(ICON)}}, {"type": "text", "text": "<|image|>"},
    ]}]  # fmt: skip
    with pytest.raises(InvalidParameter, match=r"2 image placeholders .* for 1 images"):
        _submit(frontend, _http_request(messages))


def test_a_base64_screenshot_is_what_the_agent_sends() -> None:
    url = data_url(SCREEN)
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == SCREEN
