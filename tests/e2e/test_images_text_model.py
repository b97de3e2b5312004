"""Images against a real server on the tiny text checkpoint, over the openai SDK and gRPC: every bad image is a
400 / INVALID_ARGUMENT naming its message and part (checked before the modality, so a bad image is reported as
such whatever the model), a good image for this text model is MODALITY_NOT_SUPPORTED naming the part, and the
phone agent's request with the images stripped from it is served. The server has small image limits."""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest

from autoglm.v1 import generation_pb2, generation_pb2_grpc, types_pb2
from autoglm_rpc.client import error_from_rpc
from tests.gateway.media.vision_files import data_url, image_bytes
from tests.support import ServerThread, server_settings

MAX_BYTES, MAX_PIXELS = 6000, 300 * 300
GOOD = image_bytes(56, 84)
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NOISE = random.Random(0).randbytes(MAX_BYTES + 10)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("media")
    (path / "shot.png").write_bytes(GOOD)
    return path


@pytest.fixture(scope="module")
def server(glm_checkpoint: Path, media_dir: Path) -> Iterator[ServerThread]:
    settings = server_settings(
        glm_checkpoint, workers=1, max_images_per_prompt=2, max_image_bytes=MAX_BYTES,
        max_image_pixels=MAX_PIXELS, allowed_local_media_path=str(media_dir),
    )  # fmt: skip
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def sdk(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.app.http.port}/v1", api_key="none", max_retries=0)


def _png_bytes_over_pixels() -> bytes:
    return image_bytes(400, 400)  # a flat image: few bytes, 160,000 pixels


# (id, the image part's bytes or URL, reason, text the message must contain); each sent as part 1 of message 1.
BAD = [
    (
        "corrupt",
        GOOD[:60] + bytes(b ^ 0x5A for b in GOOD[60:100]) + GOOD[100:],
        "IMAGE_INVALID",
        "cannot be decoded",
    ),
    ("a PNG signature then garbage", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "IMAGE_INVALID", "not a PNG"),
    ("truncated", GOOD[: len(GOOD) // 2], "IMAGE_INVALID", "cannot be decoded"),
    ("unknown format", GIF, "IMAGE_INVALID", "not a PNG, JPEG or WebP"),
    ("over the byte limit", NOISE, "IMAGE_INVALID", f"over the limit of {MAX_BYTES}"),
    ("over the pixel limit", _png_bytes_over_pixels(), "IMAGE_INVALID", "400x400, over the limit"),
    ("http URL", "https://example.com/shot.png", "IMAGE_INVALID", "not fetched"),
    ("file outside the allowed path", "file:///etc/hostname", "IMAGE_INVALID", "outside the allowed"),
]


def _http_part(image: bytes | str) -> dict:
    url = image if isinstance(image, str) else data_url(image)
    return {"type": "image_url", "image_url": {"url": url, "detail": "high"}}


def _http_messages(*images: bytes | str) -> list[dict]:
    parts = [{"type": "text", "text": "What is on the screen?"}, *(_http_part(i) for i in images)]
    return [{"role": "system", "content": "You operate a phone."}, {"role": "user", "content": parts}]


def _grpc_chat(*images: bytes) -> types_pb2.ChatInput:
    parts = [types_pb2.ContentPart(text="What is on the screen?")]
    parts += [types_pb2.ContentPart(image=types_pb2.Image(data=data)) for data in images]
    return types_pb2.ChatInput(
        messages=[
            types_pb2.ChatMessage(role="system", content="You operate a phone."),
            types_pb2.ChatMessage(role="user", parts=parts),
        ]
    )


def _http_error(sdk: openai.OpenAI, messages: list[dict]) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="", messages=messages, max_tokens=4)  # type: ignore[arg-type]
    return caught.value


def _grpc_error(server: ServerThread, chat: types_pb2.ChatInput, method: str = "Generate"):  # type: ignore[no-untyped-def]
    with server.channel() as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        request = (
            generation_pb2.TokenizeRequest(chat=chat)
            if method == "Tokenize"
            else generation_pb2.GenerateRequest(chat=chat, stopping=types_pb2.StopOptions(max_new_tokens=4))
        )
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, method)(request, timeout=60)
    return error_from_rpc(caught.value)


@pytest.mark.parametrize(("image", "reason", "text"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_image_is_a_400_naming_its_part(
    sdk: openai.OpenAI, server: ServerThread, image: bytes | str, reason: str, text: str
) -> None:
    error = _http_error(sdk, _http_messages(image))
    assert error.status_code == 400 and error.code == reason.lower(), error
    assert error.param == "messages[1].content[1]" and text in error.message
    if isinstance(image, bytes):
        status = _grpc_error(server, _grpc_chat(image))
        assert (status.code, status.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), status
        assert status.message.startswith("chat.messages[1].parts[1].image: ") and text in status.message


def test_too_many_images_names_the_first_part_over_the_limit(sdk: openai.OpenAI, server: ServerThread) -> None:
    error = _http_error(sdk, _http_messages(GOOD, GOOD, GOOD))
    assert (error.code, error.param) == ("too_many_images", "messages[1].content[3]")
    status = _grpc_error(server, _grpc_chat(GOOD, GOOD, GOOD))
    assert status.reason == "TOO_MANY_IMAGES" and status.message.startswith("chat.messages[1].parts[3].image")


def test_a_good_image_for_a_text_model_is_modality_not_supported(
    sdk: openai.OpenAI, server: ServerThread, media_dir: Path
) -> None:
    for image in (GOOD, (media_dir / "shot.png").as_uri()):  # inline, and a file under the allowed path
        error = _http_error(sdk, _http_messages(image))
        assert (error.code, error.param) == ("modality_not_supported", "messages[1].content[1]"), error
        assert "takes text only" in error.message
    for method in ("Generate", "Tokenize"):
        status = _grpc_error(server, _grpc_chat(GOOD), method)
        assert (status.code, status.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MODALITY_NOT_SUPPORTED")
        assert status.message.startswith("chat.messages[1].parts[1].image: ")


def test_grpc_refuses_content_and_parts_together(server: ServerThread) -> None:
    chat = types_pb2.ChatInput(
        messages=[types_pb2.ChatMessage(role="user", content="hi", parts=[types_pb2.ContentPart(text="x")])]
    )
    status = _grpc_error(server, chat)
    assert status.reason == "INVALID_PARAMETER" and status.message.startswith("chat.messages[0]: set content or")


def test_the_agents_request_without_images_is_served(sdk: openai.OpenAI, server: ServerThread) -> None:
    """Open-AutoGLM strips the images from earlier turns; a newest turn of text parts alone is text too."""
    messages = [
        {"role": "system", "content": "You operate a phone."},
        {"role": "user", "content": [{"type": "text", "text": "Open settings"}]},
        {"role": "assistant", "content": '<answer>do(action="Launch", app="Settings")</answer>'},
        {
            "role": "user",
            "content": [{"type": "text", "text": "** Screen Info **"}, {"type": "text", "text": "{}"}],
        },
    ]
    reply = sdk.chat.completions.create(model="", messages=messages, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    flat = [{**m, "content": m["content"] if isinstance(m["content"], str) else "".join(
        p["text"] for p in m["content"])} for m in messages]  # fmt: skip
    same = sdk.chat.completions.create(model="", messages=flat, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    assert reply.usage.completion_tokens > 0
    assert (reply.usage.prompt_tokens, reply.choices[0].message.content) == (
        same.usage.prompt_tokens, same.choices[0].message.content,
    )  # fmt: skip
    with server.client() as client:  # the server still serves after every refusal above
        assert client.generate("hello", max_new_tokens=2, timeout=60).sequences[0].text is not None
