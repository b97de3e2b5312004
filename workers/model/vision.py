"""The vision side of a vision-language checkpoint (GLM-4.1V, `Glm4vForConditionalGeneration`): decoding and
preprocessing a prompt's images, their M-RoPE positions, and the vision tower.

Only the image processor's PIL class is used (transformers builds `Glm4vProcessor` only when torchvision
imports, which the worker does not need): `preprocessor_config.json` is read into `Glm4vImageProcessorPil`
whatever image processor type it names. An image's token count follows from its size alone (`smart_resize`:
each token is a 28 x 28 pixel square after resizing), so a request whose stated count differs is refused when it
arrives, from the file's header; the pixels are decoded and preprocessed on a background thread meanwhile, and
a file broken past its header fails its request when its image reaches the tower.
"""

from __future__ import annotations

import hashlib
import io
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from workers.protocol import ImageInput

logger = logging.getLogger(__name__)

# A decoded image larger than this many pixels is refused before the decoder allocates it (PIL's own bomb
# check warns at about 89 M pixels and fails at twice that; a phone screenshot is 2.6 M).
MAX_IMAGE_PIXELS = 64_000_000


class ImageError(ValueError):
    """An image of a request cannot be used (undecodable, or its token count differs from the prompt's); the
    message is for the caller. Only that request fails."""


@dataclass(frozen=True, slots=True)
class SizedImage:
    """An image file whose header was read: its grid after resizing, `grid_thw` (1, patch rows, patch columns),
    and the `num_tokens` image tokens the model gives it (`grid_thw` product / spatial_merge_size**2)."""

    data: bytes
    grid_thw: tuple[int, int, int]
    num_tokens: int


class VisionModel:
    """A loaded vision-language model's image path: `size` on arrival (the header only), `preprocess` in the
    background, `positions` once per request, `encode` when a step prefills image tokens. Called from the worker
    loop only; preprocessing runs on one thread of its own, so that a screenshot's 0.1 to 0.8 s of PIL work
    overlaps the steps instead of stalling every stream's decode."""

    def __init__(self, model: torch.nn.Module, processor) -> None:
        self.model = model
        self.processor = processor  # Glm4vImageProcessorPil
        config = model.config
        self.image_token_id: int = config.image_token_id
        self.merge_size: int = config.vision_config.spatial_merge_size
        self.device = next(model.parameters()).device
        self._preprocessing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-preprocess")

    @classmethod
    def load(cls, model: torch.nn.Module, model_path: str | Path, local_files_only: bool = True) -> VisionModel:
        """The vision path of `model`, with the image processor of the checkpoint at `model_path`."""
        from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

        processor = Glm4vImageProcessorPil.from_pretrained(str(model_path), local_files_only=local_files_only)
        return cls(model, processor)

    def size(self, data: bytes) -> SizedImage:
        """Read an image file's header and size its grid as the processor will; raises `ImageError`."""
        from PIL import Image, UnidentifiedImageError
        from transformers.models.glm4v.image_processing_pil_glm4v import smart_resize

        try:
            with Image.open(io.BytesIO(data)) as image:  # reads the header, not the pixels
                width, height = image.size
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageError(f"the image cannot be decoded: {exc}") from exc
        if width * height > MAX_IMAGE_PIXELS:
            raise ImageError(f"the image has {width}x{height} pixels, over {MAX_IMAGE_PIXELS}")
        processor = self.processor
        try:
            height, width = smart_resize(
                num_frames=processor.temporal_patch_size,
                height=height,
                width=width,
                temporal_factor=processor.temporal_patch_size,
                factor=processor.patch_size * processor.merge_size,
                min_pixels=processor.size["shortest_edge"],
                max_pixels=processor.size["longest_edge"],
            )
        except ValueError as exc:  # an aspect ratio over 200
            raise ImageError(f"the image cannot be used: {exc}") from exc
        grid = (1, height // processor.patch_size, width // processor.patch_size)
        return SizedImage(data, grid, grid[1] * grid[2] // self.merge_size**2)

    def preprocess(self, image: SizedImage) -> Future[torch.Tensor]:
        """Start decoding and preprocessing `image` on the preprocessing thread; the future's result is its
        pixel values [t * h * w patches, 3 * 2 * 14 * 14], or an `ImageError` if the file is broken."""
        return self._preprocessing.submit(self._pixel_values, image)

    def _pixel_values(self, image: SizedImage) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(image.data)) as picture:
                rgb = picture.convert("RGB")  # decodes every pixel: a truncated file fails here
        except (OSError, Image.DecompressionBombError) as exc:
            raise ImageError(f"the image cannot be decoded: {exc}") from exc
        features = self.processor(images=[rgb], return_tensors="pt")
        grid = tuple(features["image_grid_thw"][0].tolist())
        if grid != image.grid_thw:  # the same smart_resize sized both: a disagreement is a bug, not the image's
            raise RuntimeError(f"the image processor gave grid {grid}, not the {image.grid_thw} sized")
        return features["pixel_values"]

    def warm_up_image(self) -> ImageInput:
        """The smallest image the processor makes (a grey square scaled up to its minimum), as a request has it."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (28, 28), (128, 128, 128)).save(buffer, format="PNG")
        data = buffer.getvalue()
        return ImageInput(data, "image/png", self.size(data).num_tokens, hashlib.sha256(data).hexdigest())

    def positions(
        self, prompt_ids: tuple[int, ...], grids: list[tuple[int, int, int]]
    ) -> tuple[torch.Tensor, int]:
        """The prompt's M-RoPE positions [3, len(prompt_ids)] (temporal, row, column) and its rope delta (the
        last position + 1 - the prompt's length), computed by the model's own `get_rope_index` on the CPU.
        Decode continues at cache index + delta on all three axes."""
        input_ids = torch.tensor([prompt_ids], dtype=torch.int64)  # [1, L]
        token_types = (input_ids == self.image_token_id).to(torch.int32)  # 1: image, 0: text
        grid_thw = torch.tensor(grids, dtype=torch.int64)  # [num_images, 3]
        positions, deltas = self.model.model.get_rope_index(
            input_ids, mm_token_type_ids=token_types, image_grid_thw=grid_thw
        )
        return positions[:, 0], int(deltas[0, 0])  # [3, L]

    def encode(self, pixel_values: list[torch.Tensor], grids: list[tuple[int, int, int]]) -> list[torch.Tensor]:
        """One vision tower forward over images of any requests (`pixel_values[i]` from `preprocess`, its grid
        `grids[i]`); returns each image's embeddings [num_tokens, hidden_size] in the language model's dtype, on
        the device."""
        pixels = torch.cat(pixel_values).to(self.device, non_blocking=True)  # [sum of patches, 1176]
        grid_thw = torch.tensor(grids, dtype=torch.int64, device=self.device)  # [N, 3]
        output = self.model.get_image_features(pixels, grid_thw, return_dict=True)
        dtype = self.model.get_input_embeddings().weight.dtype
        return [embeds.to(dtype) for embeds in output.pooler_output]
