"""Image intake: where an image part's bytes come from (data: and file:// URLs, gRPC bytes), the Pillow checks
(format, whole file, pixel limit, bombs), the order of the checks over a prompt, and the work's thread."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import threading
import zlib
from pathlib import Path

import pytest

from autoglm_rpc.core.config_sections import MediaSettings
from autoglm_rpc.core.errors import ImageInvalid, InvalidParameter, ModalityNotSupported, TooManyImages
from autoglm_rpc.core.requests import ChatMessage, ChatPrompt, ImagePart, TextPart
from autoglm_rpc.media import intake as intake_module
from autoglm_rpc.media.content_format import detect_content_format
from autoglm_rpc.media.intake import ImageIntake
from autoglm_rpc.media.probe import probe_image
from autoglm_rpc.media.source import read_image
from autoglm_rpc.media.vision import VisionSpec
from tests.gateway.media.vision_files import GLM4V_CHAT_TEMPLATE, STRING_CHAT_TEMPLATE, data_url, image_bytes
from workers.model.checkpoints import CHAT_TEMPLATE

FIELD = "messages[0].content[1]"
SPEC = VisionSpec(image_token_id=7, image_token="<|image|>", placeholder="<|image|>")
MiB = 1024 * 1024


def _part(url: str = "", data: bytes = b"", media_type: str = "", field: str = FIELD) -> ImagePart:
    return ImagePart(field, url=url, data=data, media_type=media_type)


def _refused(match: str, call, *args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageInvalid, match=match) as refused:
        call(*args)
    assert (refused.value.field, refused.value.reason) == (FIELD, "IMAGE_INVALID")


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR of that size (valid CRC) and IEND: a header that claims any size for free."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# -- sources ----------------------------------------------------------------------------------------------------


def test_a_data_url_gives_its_bytes_and_declared_type() -> None:
    data = image_bytes()
    assert read_image(_part(data_url(data)), MiB, None) == (data, "image/png")
    assert read_image(_part(data_url(data, "image/jpg")), MiB, None) == (data, "image/jpeg")
    assert read_image(_part(data=data), MiB, None) == (data, "")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("data:image/png;base64,@@@@", "not valid base64"),
        ("data:image/png,rawbytes", "must be base64"),
        ("data:image/png;base64", "needs a comma"),
        ("data:image/gif;base64,R0lGODlh", "unsupported media type 'image/gif'"),
        ("data:image/png;base64,", "no bytes"),
        ("https://example.com/a.png", "http\\(s\\) image URLs are not fetched"),
        ("ftp://example.com/a.png", "must be a data: URL"),
        ("file:///etc/passwd", "file:// image URLs are off"),
    ],
)
def test_bad_sources_are_refused_naming_the_part(url: str, match: str) -> None:
    _refused(match, read_image, _part(url), MiB, None)


def test_the_byte_limit_is_checked_before_decoding_or_reading(tmp_path: Path) -> None:
    data = image_bytes(200, 200)
    _refused("over the limit of 100", read_image, _part(data_url(data)), 100, None)
    _refused("over the limit of 100", read_image, _part(data=data), 100, None)
    (tmp_path / "big.png").write_bytes(data)
    _refused("over the limit of 100", read_image, _part((tmp_path / "big.png").as_uri()), 100, str(tmp_path))


def test_file_urls_read_only_under_the_allowed_path(tmp_path: Path) -> None:
    allowed, outside = tmp_path / "media", tmp_path / "secret"
    allowed.mkdir()
    outside.mkdir()
    data = image_bytes()
    (allowed / "shot one.png").write_bytes(data)
    (outside / "x.png").write_bytes(data)
    (allowed / "link.png").symlink_to(outside / "x.png")
    assert read_image(_part((allowed / "shot one.png").as_uri()), MiB, str(allowed)) == (data, "")
    for url in (
        f"file://{allowed}/../secret/x.png",
        (allowed / "link.png").as_uri(),
        (outside / "x.png").as_uri(),
    ):
        _refused("outside the allowed local media path", read_image, _part(url), MiB, str(allowed))
    _refused("no such image file", read_image, _part((allowed / "none.png").as_uri()), MiB, str(allowed))
    _refused("names a local path", read_image, _part("file://host/x.png"), MiB, str(allowed))


# -- the Pillow checks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_each_format_probes_to_its_size(kind: str, media_type: str) -> None:
    header = probe_image(image_bytes(120, 90, kind), FIELD, 10**6)
    assert (header.media_type, header.width, header.height) == (media_type, 120, 90)


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP"])
def test_a_truncated_file_is_refused(kind: str) -> None:
    data = image_bytes(300, 200, kind)
    _refused("cannot be decoded|not a PNG", probe_image, data[: len(data) * 2 // 3], FIELD, 10**6)


def test_unknown_formats_and_garbage_are_refused() -> None:
    gif = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
    _refused("not a PNG, JPEG or WebP", probe_image, gif, FIELD, 10**6)
    _refused("not a PNG, JPEG or WebP", probe_image, b"hello, not an image", FIELD, 10**6)
    assert probe_image(image_bytes(kind="JPEG"), FIELD, 10**6).media_type == "image/jpeg"  # whatever the label
    _refused(
        "unsupported media type 'image/bmp'", read_image, _part(data=b"BM..", media_type="image/bmp"), 9, None
    )


def test_the_pixel_limit_and_bombs_are_refused_from_the_header() -> None:
    _refused("4000x3000, over the limit of 1000000 pixels", probe_image, _png_header(4000, 3000), FIELD, 10**6)
    # Past twice Pillow's own bomb limit: refused by Pillow as it opens, before our limit is even read.
    _refused("too many pixels", probe_image, _png_header(100_000, 100_000), FIELD, 10**12)
    _refused("cannot be decoded", probe_image, _png_header(64, 64), FIELD, 10**6)  # a header, no pixel data


# -- a prompt's images ------------------------------------------------------------------------------------------


def _prompt(*parts: ImagePart | TextPart) -> ChatPrompt:
    return ChatPrompt((ChatMessage("system", "be brief"), ChatMessage("user", "", parts)))


def _run(intake: ImageIntake, prompt: ChatPrompt):  # type: ignore[no-untyped-def]
    return asyncio.run(intake.prepare(prompt, "tiny"))


def test_a_vision_model_gets_each_image_counted_and_hashed() -> None:
    png, jpeg = image_bytes(1080, 2400), image_bytes(64, 64, "JPEG")
    intake = ImageIntake(MediaSettings(), SPEC, GLM4V_CHAT_TEMPLATE)
    prepared = _run(intake, _prompt(_part(data_url(png), field="a"), TextPart("hi"), _part(data=jpeg, field="b")))
    assert [p.field for p in prepared] == ["a", "b"]
    first, second = (p.image for p in prepared)
    assert (first.data, first.media_type, first.num_tokens) == (png, "image/png", SPEC.num_tokens(1080, 2400))
    assert first.content_hash == hashlib.sha256(png).hexdigest()
    assert (second.media_type, second.num_tokens) == ("image/jpeg", SPEC.num_tokens(64, 64))
    assert intake.content_format == "openai"
    assert _run(intake, ChatPrompt((ChatMessage("user", "text only"),))) == ()


def test_the_checks_run_in_order_count_then_each_image_then_modality() -> None:
    good, bad = data_url(image_bytes()), "data:image/png;base64,AAAA"
    text_model = ImageIntake(MediaSettings(max_images_per_prompt=2), None, CHAT_TEMPLATE)
    with pytest.raises(TooManyImages, match="at most 2 images") as too_many:
        _run(text_model, _prompt(*(_part(good, field=f"p{i}") for i in range(3))))
    assert (too_many.value.field, too_many.value.reason) == ("p2", "TOO_MANY_IMAGES")
    with pytest.raises(ImageInvalid) as invalid:  # a bad image is reported as such, whatever the model
        _run(text_model, _prompt(_part(good, field="p0"), _part(bad, field="p1")))
    assert invalid.value.field == "p1"
    with pytest.raises(ImageInvalid) as first_bad:
        _run(text_model, _prompt(_part("https://x/a.png", field="p0"), _part(bad, field="p1")))
    assert first_bad.value.field == "p0"
    with pytest.raises(ModalityNotSupported, match="'tiny' takes text only") as modality:
        _run(text_model, _prompt(TextPart("look"), _part(good, field="p1")))
    assert (modality.value.field, modality.value.reason) == ("p1", "MODALITY_NOT_SUPPORTED")
    assert isinstance(modality.value, InvalidParameter)  # so HTTP names the part as `param`


def test_an_aspect_ratio_the_processor_refuses_is_an_invalid_image() -> None:
    intake = ImageIntake(MediaSettings(), SPEC, GLM4V_CHAT_TEMPLATE)
    with pytest.raises(ImageInvalid, match="aspect ratio"):
        _run(intake, _prompt(_part(data_url(image_bytes(6000, 20)))))


def test_the_work_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = intake_module.probe_image

    def probe(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(intake_module, "probe_image", probe)
    intake = ImageIntake(MediaSettings(), SPEC, None)
    _run(intake, _prompt(_part(data_url(image_bytes())), _part(data_url(image_bytes()))))
    assert len(threads) == 2 and all(name.startswith("image-intake") for name in threads)
    intake.close()


def test_the_content_format_is_read_from_the_template() -> None:
    assert detect_content_format(GLM4V_CHAT_TEMPLATE) == "openai"
    assert detect_content_format(STRING_CHAT_TEMPLATE) == "string"
    assert detect_content_format(CHAT_TEMPLATE) == "string"
    assert detect_content_format("{% set c = message['content'] %}{% for x in c %}{{ x }}{% endfor %}") == "openai"
    assert detect_content_format(None) == "string"
    marked = "{% for m in messages %}{% generation %}{% for p in m.content %}{{ p.text }}{% endfor %}"
    assert (
        detect_content_format(marked + "{% endgeneration %}{% endfor %}") == "openai"
    )  # the tokenizer's own tags are known
    chosen = ImageIntake(MediaSettings(chat_template_content_format="string"), SPEC, GLM4V_CHAT_TEMPLATE)
    assert chosen.content_format == "string"
