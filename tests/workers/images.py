"""Helpers for the vision tests: image files, GLM-4.1V prompts with their image tokens, transformers' output."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from workers.protocol import ImageInput, SamplingParams, StoppingParams, Submit


def image_file(width: int, height: int, seed: int, image_format: str = "PNG") -> bytes:
    """A noise image of this size, encoded (PNG unless told)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


class VisionPrompts:
    """Builds prompts for a GLM-4.1V checkpoint as the gateway does: the chat template renders one <|image|>
    per image part, which is repeated once per image token (the count from the image processor)."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoTokenizer
        from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.processor = Glm4vImageProcessorPil.from_pretrained(path)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<|image|>")

    def image(self, data: bytes) -> ImageInput:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as picture:
            features = self.processor(images=[picture.convert("RGB")], return_tensors="pt")
        num_tokens = int(features["image_grid_thw"].prod()) // 4  # spatial merge 2 x 2
        return ImageInput(data, "image/png", num_tokens, hashlib.sha256(data).hexdigest())

    def prompt(self, parts: list, images: list[ImageInput]) -> tuple[int, ...]:
        """`parts`: strings and None (an image, the next of `images`), one user turn."""
        content = [{"type": "image"} if part is None else {"type": "text", "text": part} for part in parts]
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )["input_ids"]
        counts = iter(image.num_tokens for image in images)
        ids: list[int] = []
        for token_id in rendered:
            ids.extend([token_id] * next(counts) if token_id == self.image_token_id else [token_id])
        return tuple(ids)

    def submit(self, request_id: str, parts: list, files: list[bytes], max_new_tokens: int = 8) -> Submit:
        images = [self.image(data) for data in files]
        return Submit(
            request_id=request_id,
            prompt_ids=self.prompt(parts, images),
            sampling=SamplingParams(),
            stopping=StoppingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
            images=tuple(images),
        )

    def reference(self, model, submit: Submit) -> list[int]:
        """transformers' greedy `generate()` over the same prompt and images (the same PIL processor)."""
        from PIL import Image

        input_ids = torch.tensor([submit.prompt_ids])
        kwargs = {}
        if submit.images:
            pictures = [Image.open(io.BytesIO(image.data)).convert("RGB") for image in submit.images]
            features = self.processor(images=pictures, return_tensors="pt")
            kwargs = {
                "pixel_values": features["pixel_values"],
                "image_grid_thw": features["image_grid_thw"],
                "mm_token_type_ids": (input_ids == self.image_token_id).to(torch.int32),
            }
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=submit.stopping.max_new_tokens,
            eos_token_id=None,
            pad_token_id=0,
            **kwargs,
        )
        return output[0, input_ids.shape[1] :].tolist()
