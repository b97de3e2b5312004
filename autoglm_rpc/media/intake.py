"""The images of one request, checked and counted before admission: `ImageIntake.prepare` is the one call the
front end makes.

Order of the checks (one order for both protocols; the first failure answers): the number of images
(TOO_MANY_IMAGES, naming the first part over the limit), then each image in prompt order: its source and byte
size, its header, format, pixel count and whether the file is whole (IMAGE_INVALID); then the model's modality
(MODALITY_NOT_SUPPORTED, naming the first image, for a checkpoint without a vision tower); the context limit is
checked after tokenizing (PROMPT_TOO_LONG naming the image the limit falls in). A bad image is thus reported as
such whatever the model.

An http(s) URL, where `allow_remote_media` allows it, is fetched first in a pool of its own (a slow remote
server then holds a fetch thread, never the threads that check images). The work per image runs in a small
thread pool, not on the event loop: reading a header and verifying a file is
cheap (a fraction of a millisecond for a PNG screenshot, a few ms for a JPEG's draft decode) but bounded only by
the limits, and a bomb or a corrupt file must never stall the streams the loop is serving. Pillow releases the
GIL while it decodes, so two threads keep up with many callers on two cores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from autoglm_rpc.core.config_sections import MediaSettings
from autoglm_rpc.core.errors import ImageInvalid, ModalityNotSupported, TooManyImages
from autoglm_rpc.core.requests import ChatPrompt, ImagePart, Prompt
from autoglm_rpc.media.content_format import detect_content_format
from autoglm_rpc.media.probe import ImageHeader, probe_image
from autoglm_rpc.media.remote import fetch_image
from autoglm_rpc.media.source import is_remote, read_image
from autoglm_rpc.media.vision import VisionSpec
from workers.protocol import ImageInput

_THREADS = 2
_FETCH_THREADS = 4


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """A checked image of a prompt: what the worker gets, and the field that names its part."""

    field: str
    image: ImageInput
    width: int
    height: int


class ImageIntake:
    """Checks and counts a prompt's images for one served model (`vision` None: a text model)."""

    def __init__(self, settings: MediaSettings, vision: VisionSpec | None, template_source: str | None) -> None:
        self.settings = settings
        self.vision = vision
        chosen = settings.chat_template_content_format
        self.content_format = detect_content_format(template_source) if chosen == "auto" else chosen
        self._executor: ThreadPoolExecutor | None = None
        self._fetcher: ThreadPoolExecutor | None = None

    async def prepare(self, prompt: Prompt, model_id: str) -> tuple[PreparedImage, ...]:
        """The prompt's images, checked in the order of the module docstring; () for a prompt without any."""
        parts = prompt.images if isinstance(prompt, ChatPrompt) else ()
        if not parts:
            return ()
        limit = self.settings.max_images_per_prompt
        if len(parts) > limit:
            raise TooManyImages(parts[limit].field, limit)
        results = await asyncio.gather(*(self._one(part) for part in parts), return_exceptions=True)
        for result in results:  # the first failure in prompt order answers
            if isinstance(result, BaseException):
                raise result
        checked: list[_Checked] = results  # type: ignore[assignment]
        if self.vision is None:
            raise ModalityNotSupported(parts[0].field, model_id)
        return tuple(self._prepared(item, self.vision) for item in checked)

    def close(self) -> None:
        for executor in (self._executor, self._fetcher):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

    async def _one(self, part: ImagePart) -> _Checked:
        loop = asyncio.get_running_loop()
        settings = self.settings
        if is_remote(part) and settings.allow_remote_media:
            if self._fetcher is None:
                self._fetcher = ThreadPoolExecutor(_FETCH_THREADS, thread_name_prefix="image-fetch")
            data = await loop.run_in_executor(
                self._fetcher, fetch_image, part, settings.max_image_bytes, settings.remote_media_timeout
            )
            part = dataclasses.replace(part, url="", data=data)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(_THREADS, thread_name_prefix="image-intake")
        return await loop.run_in_executor(self._executor, self._check, part)

    def _check(self, part: ImagePart) -> _Checked:
        """Read, probe and hash one image (in the pool's thread: a hash of megabytes takes milliseconds too)."""
        settings = self.settings
        data, _ = read_image(part, settings.max_image_bytes, settings.allowed_local_media_path)
        header = probe_image(data, part.field, settings.max_image_pixels)
        return _Checked(part, data, header, hashlib.sha256(data).hexdigest())

    @staticmethod
    def _prepared(checked: _Checked, vision: VisionSpec) -> PreparedImage:
        part, header = checked.part, checked.header
        try:
            num_tokens = vision.num_tokens(header.width, header.height)
        except ValueError as error:
            raise ImageInvalid(part.field, f"the image is {header.width}x{header.height}: {error}") from None
        image = ImageInput(checked.data, header.media_type, num_tokens, checked.content_hash)
        return PreparedImage(part.field, image, header.width, header.height)


@dataclass(frozen=True, slots=True)
class _Checked:
    part: ImagePart
    data: bytes
    header: ImageHeader
    content_hash: str
