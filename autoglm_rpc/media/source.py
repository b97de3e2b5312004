"""Where an image part's bytes come from: a `data:` URL, a `file://` URL under the allowed directory, or the
bytes themselves (gRPC). http(s) URLs are refused here: fetching a caller's URL from the server is a
request-forgery risk and a stall, and the phone agent sends its screenshots inline; where the operator allows it,
`remote.py` fetches them (the intake routes them there first).

Every refusal is `ImageInvalid` naming the part. The byte limit is checked before decoding base64 (from the
encoded length) and before reading a file (from its size), so an oversized image costs no copy.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from urllib.parse import unquote, urlsplit

from autoglm_rpc.core.errors import ImageInvalid
from autoglm_rpc.core.requests import ImagePart

# The media types an image part may declare (the bytes are checked against the declared type by `probe`).
MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp")
_ALIASES = {"image/jpg": "image/jpeg"}


def declared_media_type(part: ImagePart, value: str) -> str:
    """A declared media type, normalized: one of MEDIA_TYPES, or "" when none was declared."""
    media_type = _ALIASES.get(value.strip().lower(), value.strip().lower())
    if media_type and media_type not in MEDIA_TYPES:
        raise ImageInvalid(part.field, f"unsupported media type {value!r}; send {', '.join(MEDIA_TYPES)}")
    return media_type


def is_remote(part: ImagePart) -> bool:
    """Whether `part` is an http(s) URL."""
    return part.url[:8].lower().startswith(("http://", "https://"))


def read_image(part: ImagePart, max_bytes: int, local_root: str | None) -> tuple[bytes, str]:
    """The encoded file of `part` and its declared media type ("" when undeclared). Blocking (file reads)."""
    if not part.url:
        if not part.data:
            raise ImageInvalid(part.field, "the image has no bytes")
        _check_size(part, len(part.data), max_bytes)
        return part.data, declared_media_type(part, part.media_type)
    scheme = part.url.split(":", 1)[0].lower() if ":" in part.url else ""
    if scheme == "data":
        return _from_data_url(part, max_bytes)
    if scheme == "file":
        return _from_file_url(part, max_bytes, local_root), ""
    if scheme in ("http", "https"):
        raise ImageInvalid(
            part.field, "http(s) image URLs are not fetched by this server (allow_remote_media); send a data: URL"
        )
    raise ImageInvalid(part.field, "the image URL must be a data: URL (or file:// where the server allows it)")


def _check_size(part: ImagePart, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageInvalid(part.field, f"the image has {size} bytes, over the limit of {max_bytes}")


def _from_data_url(part: ImagePart, max_bytes: int) -> tuple[bytes, str]:
    header, comma, payload = part.url[len("data:") :].partition(",")
    if not comma:
        raise ImageInvalid(part.field, "a data: URL needs a comma before its data")
    media_type, *params = header.split(";")
    if "base64" not in (param.strip().lower() for param in params):
        raise ImageInvalid(part.field, "a data: URL image must be base64 (data:image/png;base64,...)")
    declared = declared_media_type(part, media_type)
    payload = payload.strip()
    _check_size(part, len(payload) * 3 // 4, max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInvalid(part.field, "the data: URL is not valid base64") from None
    if not data:
        raise ImageInvalid(part.field, "the image has no bytes")
    return data, declared


def _from_file_url(part: ImagePart, max_bytes: int, local_root: str | None) -> bytes:
    if local_root is None:
        raise ImageInvalid(part.field, "file:// image URLs are off (the server sets no allowed_local_media_path)")
    url = urlsplit(part.url)
    if url.netloc not in ("", "localhost"):
        raise ImageInvalid(part.field, "a file:// URL names a local path (file:///path)")
    root = Path(local_root).resolve()
    path = Path(unquote(url.path)).resolve()  # resolves `..` and symlinks before the containment check
    if not path.is_relative_to(root):
        raise ImageInvalid(part.field, "the file is outside the allowed local media path")
    try:
        if not path.is_file():
            raise ImageInvalid(part.field, "no such image file under the allowed local media path")
        _check_size(part, path.stat().st_size, max_bytes)
        data = path.read_bytes()
    except OSError:
        raise ImageInvalid(part.field, "the image file cannot be read") from None
    _check_size(part, len(data), max_bytes)  # it may have grown since stat
    return data
