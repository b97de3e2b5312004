"""http(s) image URLs: refused unless allow_remote_media is on; then fetched within the byte limit and the time
limit, every failure an IMAGE_INVALID naming the part. Against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autoglm_rpc.core.config_sections import MediaSettings
from autoglm_rpc.core.errors import ImageInvalid, ModalityNotSupported
from autoglm_rpc.core.requests import ChatMessage, ChatPrompt, ImagePart
from autoglm_rpc.media.intake import ImageIntake
from autoglm_rpc.media.remote import fetch_image
from autoglm_rpc.media.vision import VisionSpec
from tests.gateway.media.vision_files import image_bytes

PNG = image_bytes(56, 56)
SPEC = VisionSpec(image_token_id=7, image_token="<|image|>", placeholder="<|image|>")


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        match self.path:
            case "/shot.png":
                self._send(PNG)
            case "/big.png":
                self._send(b"x" * 5000)
            case "/chunked-big":  # no Content-Length: the limit is found while reading
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"x" * 5000)
            case "/slow":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            case "/redirect":
                self.send_response(302)
                self.send_header("Location", "/shot.png")
                self.end_headers()
            case _:
                self.send_error(404)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _part(url: str) -> ImagePart:
    return ImagePart("messages[0].content[0]", url=url)


def test_a_fetch_gives_the_body_and_follows_redirects(base_url: str) -> None:
    assert fetch_image(_part(f"{base_url}/shot.png"), 10_000, 5.0) == PNG
    assert fetch_image(_part(f"{base_url}/redirect"), 10_000, 5.0) == PNG


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("/missing.png", "answered HTTP 404"),
        ("/big.png", "5000 bytes, over the limit of 1000"),
        ("/chunked-big", "more than 1000 bytes"),
        ("/slow", "did not answer in time"),
    ],
)
def test_a_failed_fetch_is_an_invalid_image(base_url: str, path: str, match: str) -> None:
    with pytest.raises(ImageInvalid, match=match) as refused:
        fetch_image(_part(base_url + path), 1000, 0.5)
    assert refused.value.field == "messages[0].content[0]"


def test_an_unreachable_host_is_an_invalid_image() -> None:
    with pytest.raises(ImageInvalid, match="could not be fetched"):
        fetch_image(_part("http://127.0.0.1:9/x.png"), 1000, 2.0)


def test_the_intake_fetches_only_where_allowed(base_url: str) -> None:
    prompt = ChatPrompt((ChatMessage("user", "", (_part(f"{base_url}/shot.png"),)),))
    refused = ImageIntake(MediaSettings(), SPEC, None)
    with pytest.raises(ImageInvalid, match="not fetched by this server"):
        asyncio.run(refused.prepare(prompt, "m"))
    allowed = ImageIntake(MediaSettings(allow_remote_media=True), SPEC, None)
    (prepared,) = asyncio.run(allowed.prepare(prompt, "m"))
    assert (prepared.image.data, prepared.image.media_type, prepared.width) == (PNG, "image/png", 56)
    text_model = ImageIntake(MediaSettings(allow_remote_media=True), None, None)
    with pytest.raises(ModalityNotSupported):  # fetched and checked first, as any image
        asyncio.run(text_model.prepare(prompt, "m"))
    allowed.close()
