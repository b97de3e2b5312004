"""What the gateway must know of a vision-language checkpoint to place its images: the image token, and how many
of them an image of a given size becomes, from config.json and preprocessor_config.json alone.

The count is GLM-4.1V's (`Glm4vImageProcessor`, transformers 5): the image is resized by `smart_resize` to
multiples of patch_size * merge_size (28) with its area, doubled for the temporal patch, kept within
[size.shortest_edge, size.longest_edge]; it becomes (h / 14) * (w / 14) patches, merged 2x2 into tokens. The
arithmetic is reimplemented here (the gateway never imports transformers); tests/unit/test_media_tokens.py holds
it equal to transformers' own over many sizes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from autoglm_rpc.text.errors import CheckpointFileError
from autoglm_rpc.text.tokenizer import TextTokenizer

MAX_ASPECT_RATIO = 200  # smart_resize refuses a longer side over 200 times the shorter

# Glm4vImageProcessor's defaults, for a preprocessor_config.json that leaves a value out.
_DEFAULT_SIZE = {"shortest_edge": 112 * 112, "longest_edge": 28 * 28 * 15000}


@dataclass(frozen=True, slots=True)
class VisionSpec:
    """The image side of a checkpoint: its image token (id and text) and the resize rules that count tokens.

    `placeholder` is what one image becomes in a prompt rendered as a string (the template's own markers)."""

    image_token_id: int
    image_token: str
    placeholder: str
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = _DEFAULT_SIZE["shortest_edge"]
    max_pixels: int = _DEFAULT_SIZE["longest_edge"]

    def resized(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the processor resizes an image to; ValueError when the aspect ratio is over 200."""
        return smart_resize(
            self.temporal_patch_size,
            height,
            width,
            temporal_factor=self.temporal_patch_size,
            factor=self.patch_size * self.merge_size,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
        )

    def num_tokens(self, width: int, height: int) -> int:
        """Image tokens of a `width` x `height` image: grid t * h * w over merge_size**2 (t is 1 for an image)."""
        resized_height, resized_width = self.resized(width, height)
        grid_h, grid_w = resized_height // self.patch_size, resized_width // self.patch_size
        return grid_h * grid_w // self.merge_size**2


def smart_resize(
    num_frames: int,
    height: int,
    width: int,
    *,
    temporal_factor: int = 2,
    factor: int = 28,
    min_pixels: int = 112 * 112,
    max_pixels: int = 14 * 14 * 2 * 2 * 2 * 6144,
) -> tuple[int, int]:
    """transformers' `glm4v.image_processing_glm4v.smart_resize`, step for step: (height, width), each a
    multiple of `factor`, with num_frames * height * width within [min_pixels, max_pixels] where it can be."""
    if num_frames < temporal_factor:
        raise ValueError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"the aspect ratio must be at most {MAX_ASPECT_RATIO}:1")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def read_vision_spec(directory: str | Path, tokenizer: TextTokenizer) -> VisionSpec | None:
    """The checkpoint's `VisionSpec`, or None for a text model (config.json has no image_token_id or no
    vision_config). Raises CheckpointFileError when a vision checkpoint's files disagree with its tokenizer."""
    directory = Path(directory)
    config = _read_json(directory / "config.json")
    vision = config.get("vision_config")
    image_token_id = config.get("image_token_id")
    if not isinstance(vision, dict) or not isinstance(image_token_id, int):
        return None
    image_token = tokenizer.id_to_token(image_token_id)
    if image_token is None:
        raise CheckpointFileError(f"config.json's image_token_id {image_token_id} is not in the tokenizer")
    processor = _read_json(directory / "preprocessor_config.json")
    size = {**_DEFAULT_SIZE, **(processor.get("size") or {})}
    return VisionSpec(
        image_token_id=image_token_id,
        image_token=image_token,
        placeholder=_placeholder(config, tokenizer, image_token),
        patch_size=int(processor.get("patch_size", vision.get("patch_size", 14))),
        merge_size=int(processor.get("merge_size", vision.get("spatial_merge_size", 2))),
        temporal_patch_size=int(processor.get("temporal_patch_size", vision.get("temporal_patch_size", 2))),
        min_pixels=int(size["shortest_edge"]),
        max_pixels=int(size["longest_edge"]),
    )


def _placeholder(config: dict, tokenizer: TextTokenizer, image_token: str) -> str:
    begin, end = config.get("image_start_token_id"), config.get("image_end_token_id")
    begin_text = tokenizer.id_to_token(begin) if isinstance(begin, int) else None
    end_text = tokenizer.id_to_token(end) if isinstance(end, int) else None
    return f"{begin_text or ''}{image_token}{end_text or ''}"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointFileError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointFileError(f"{path} is not a JSON object")
    return data
