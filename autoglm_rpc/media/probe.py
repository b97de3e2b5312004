"""An image's header read and its file checked with Pillow, without decoding its pixels where Pillow can avoid
it: the format (PNG, JPEG or WebP), the size, and whether the file is whole.

Decompression bombs: the pixel limit is checked from the header alone, before any pixel work, and Pillow's own
bomb guard (a warning turned error here, an error past twice its limit) is mapped to the same refusal. Whether the
file is whole: PNG's `verify()` walks every chunk and checks its CRC; a JPEG is decoded in draft mode (at 1/8
scale, a fraction of the full cost) since its `verify()` reads nothing; a WebP is decoded (libwebp checks the
bitstream only then). Run off the event loop (see `intake.py`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from autoglm_rpc.core.errors import ImageInvalid

_MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
# Pillow's decoders fail on a corrupt file with whatever the parsing code hits (OSError, SyntaxError, but also
# IndexError, struct.error, ZeroDivisionError, ...): any Exception here is the file's fault, never a 500.
_DECODE_ERRORS = (Exception, MemoryError)


@dataclass(frozen=True, slots=True)
class ImageHeader:
    media_type: str
    width: int
    height: int


def probe_image(data: bytes, field: str, max_pixels: int) -> ImageHeader:
    """The checked header of the encoded image `data`; `ImageInvalid` naming `field` when it is not a whole PNG,
    JPEG or WebP file or has more than `max_pixels` pixels. The media type is the bytes' own: a declared type
    that disagrees is not an error (clients label JPEGs as PNG; OpenAI and vLLM decode by content too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            header = _header(data, field, max_pixels)
            _check_whole(data, header)
        except ImageInvalid:
            raise
        except (*_DECODE_ERRORS, Image.DecompressionBombWarning) as error:
            raise ImageInvalid(field, f"the image cannot be decoded ({_describe(error)})") from None
    return header


def _header(data: bytes, field: str, max_pixels: int) -> ImageHeader:
    try:
        image = Image.open(io.BytesIO(data), formats=tuple(_MEDIA_TYPES))
    except UnidentifiedImageError:
        raise ImageInvalid(field, "not a PNG, JPEG or WebP image") from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageInvalid(field, f"the image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageInvalid(field, f"the image is {width}x{height}, over the limit of {max_pixels} pixels")
        return ImageHeader(_MEDIA_TYPES[image.format or ""], width, height)


def _check_whole(data: bytes, header: ImageHeader) -> None:
    with Image.open(io.BytesIO(data)) as image:
        if header.media_type == "image/png":
            image.verify()
        elif header.media_type == "image/jpeg":
            image.draft("RGB", (max(1, header.width // 8), max(1, header.height // 8)))
            image.load()
        else:
            image.load()


def _describe(error: BaseException) -> str:
    if isinstance(error, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return "too many pixels for a safe decode"
    text = str(error).split("\n", 1)[0][:120]
    return text or type(error).__name__
