"""The gateway's image-token count equals transformers' own: `smart_resize` step for step over many sizes (the
phone's 1080x2400 screenshot among them), the processor's patch count, and the grid the PIL image processor
produces from real images. transformers is imported by the tests only; the gateway reimplements the arithmetic."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from PIL import Image
from transformers.models.glm4v import image_processing_pil_glm4v as theirs
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

from autoglm_rpc.media.vision import VisionSpec, read_vision_spec, smart_resize
from autoglm_rpc.text.tokenizer import TextTokenizer
from tests.gateway.media.vision_files import PREPROCESSOR, build_vision_files

SIDES = (1, 13, 27, 28, 29, 55, 56, 100, 111, 224, 333, 720, 1080, 1920, 2400, 3000, 4096, 5000)
SIZES = [*itertools.product(SIDES, SIDES), (1080, 2400), (2400, 1080), (1440, 3200), (1170, 2532), (1, 199)]
BOUNDS = [(12544, 9633792), (112 * 112, 28 * 28 * 15000), (3136, 200_000), (56 * 56, 28 * 28 * 8)]


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> VisionSpec:
    path = build_vision_files(tmp_path_factory.mktemp("glm4v"))
    found = read_vision_spec(path, TextTokenizer.from_dir(path))
    assert found is not None
    return found


def _theirs(height: int, width: int, low: int, high: int) -> tuple[int, int] | None:
    try:
        # The PIL module's copy of image_processing_glm4v.smart_resize (that module needs torchvision).
        return theirs.smart_resize(2, height, width, temporal_factor=2, factor=28, min_pixels=low, max_pixels=high)
    except ValueError:
        return None


@pytest.mark.parametrize(("low", "high"), BOUNDS)
def test_smart_resize_equals_transformers_over_many_sizes(low: int, high: int) -> None:
    compared = 0
    for width, height in SIZES:
        expected = _theirs(height, width, low, high)
        if expected is None:
            with pytest.raises(ValueError):
                smart_resize(2, height, width, temporal_factor=2, factor=28, min_pixels=low, max_pixels=high)
            continue
        ours = smart_resize(2, height, width, temporal_factor=2, factor=28, min_pixels=low, max_pixels=high)
        assert ours == expected, (width, height)
        compared += 1
    assert compared > len(SIZES) // 2


def test_token_counts_equal_the_processors_patch_count(spec: VisionSpec) -> None:
    processor = Glm4vImageProcessorPil(**{k: v for k, v in PREPROCESSOR.items() if k != "image_processor_type"})
    assert (spec.min_pixels, spec.max_pixels, spec.patch_size) == (12544, 9633792, 14)
    for width, height in SIZES:
        if _theirs(height, width, spec.min_pixels, spec.max_pixels) is None:
            with pytest.raises(ValueError):
                spec.num_tokens(width, height)
            continue
        patches = processor.get_number_of_image_patches(height, width, {})
        assert spec.num_tokens(width, height) == patches // 4, (width, height)


def test_the_phone_screenshot_count_matches_the_processed_grid(spec: VisionSpec, tmp_path: Path) -> None:
    """What the worker's processor will make of real images (PIL class, as a torch-free worker may run it)."""
    processor = Glm4vImageProcessorPil(**{k: v for k, v in PREPROCESSOR.items() if k != "image_processor_type"})
    sizes = [(1080, 2400), (640, 480), (28, 28), (10, 300), (2000, 30)]
    images = [Image.new("RGB", size, (10, 20, 30)) for size in sizes]
    grids = processor(images=images, return_tensors="np")["image_grid_thw"]
    for (width, height), (t, h, w) in zip(sizes, grids, strict=True):
        assert spec.num_tokens(width, height) == t * h * w // 4, (width, height)
    assert 3100 <= spec.num_tokens(1080, 2400) <= 3400
