"""http(s) image URLs, fetched only where the operator turned `allow_remote_media` on: the server then reaches
any address it can reach (restrict its egress), so it is off by default.

One fetch is bounded in bytes (`max_image_bytes`: a larger Content-Length is refused before the body is read,
and the body is read in chunks up to the limit) and in time (`remote_media_timeout` for the whole fetch, checked
between reads of whatever bytes have arrived, each read waiting at most the timeout: a server that trickles bytes
holds a fetch thread for at most about twice the timeout). Redirects are followed to http(s) only, as urllib
does. Every failure is `ImageInvalid` naming the part. Blocking: run in the intake's fetch pool.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from autoglm_rpc.core.errors import ImageInvalid
from autoglm_rpc.core.requests import ImagePart

_CHUNK = 64 * 1024
_HEADERS = {"User-Agent": "autoglm-rpc", "Accept": "image/png, image/jpeg, image/webp"}


def fetch_image(part: ImagePart, max_bytes: int, timeout: float) -> bytes:
    """The body of `part.url` (an http or https URL), at most `max_bytes`, fetched within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(part.url, headers=_HEADERS)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise ImageInvalid(part.field, f"the image has {declared} bytes, over the limit of {max_bytes}")
            return _read_body(response, part, max_bytes, deadline)
    except urllib.error.HTTPError as error:
        raise ImageInvalid(part.field, f"the image URL answered HTTP {error.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or type(error).__name__
        raise ImageInvalid(part.field, f"the image URL could not be fetched ({reason})") from None


def _read_body(response, part: ImagePart, max_bytes: int, deadline: float) -> bytes:  # type: ignore[no-untyped-def]
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(_CHUNK):  # what has arrived (read() would wait for a whole chunk)
        size += len(chunk)
        if size > max_bytes:
            raise ImageInvalid(part.field, f"the image has more than {max_bytes} bytes, the limit")
        if time.monotonic() > deadline:
            raise ImageInvalid(part.field, "the image URL did not answer in time")
        chunks.append(chunk)
    return b"".join(chunks)
