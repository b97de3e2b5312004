"""The images of a request inside the engine: checked on arrival, positioned once, encoded when first needed.

On arrival (`prepare_images`) each `ImageInput` is matched with its run of image tokens in the prompt, sized from
its header, and its token count checked against the model's (a mismatch fails that request alone); the prompt's
M-RoPE positions and rope delta are then computed once over the whole prompt and kept with the request
(`VisionState`), so chunked prefill, decode and recomputation after a preemption all take their slice of the same
positions. Decode positions are cache index + rope delta on all three axes.

Each image's pixels are decoded and preprocessed on a background thread from its arrival (`VisionModel`). In a
step, the vision tower runs once for every image that a scheduled prefill chunk reaches and that has no embeddings
yet, batched over the step's requests (`encode_images`); each chunk's image-token rows of the input embeddings are
then replaced by its slice of the image's embeddings (`VisionInputs`), so a chunk boundary may fall anywhere inside
an image. An image's embeddings are dropped once its last token is prefilled: a request preempted later and
recomputed preprocesses and encodes again the images its prefix-cache hit does not cover (vLLM keeps an encoder
cache by image hash, which would save that).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from workers.engine.sequence import ImageSpan, PrefillChunk, Sequence
from workers.model.vision import ImageError, SizedImage, VisionModel
from workers.protocol import Submit


@dataclass(slots=True, eq=False)
class VisionState:
    """A request's images as the model runner needs them (`Sequence.vision`; its spans are `Sequence.images`)."""

    images: list[SizedImage]  # in prompt order
    positions: torch.Tensor  # [3, prompt length] int64 on the CPU: the prompt's M-RoPE positions
    rope_delta: int
    # image index -> its pixel values being preprocessed (started on arrival), until the tower takes them
    pixels: dict[int, Future[torch.Tensor]] = field(default_factory=dict)
    embeddings: dict[int, torch.Tensor] = field(default_factory=dict)  # image index -> [num_tokens, hidden]

    def rope_positions(self, start: int, end: int) -> torch.Tensor:
        """M-RoPE positions [3, end - start] of positions [start, end): the prompt's, then index + delta."""
        prompt_length = self.positions.shape[1]
        generated = torch.arange(max(start, prompt_length), max(end, prompt_length), dtype=torch.int64)
        generated += self.rope_delta
        return torch.cat([self.positions[:, start:end], generated.expand(3, -1)], dim=1)


@dataclass(frozen=True, slots=True)
class VisionInputs:
    """What a prefill forward with images takes instead of token ids and 1-D positions."""

    rope_positions: torch.Tensor  # [3, G, L] int64 on the device
    embeds: torch.Tensor  # [G, L, hidden_size]: token embeddings with image rows replaced


def prepare_images(submit: Submit, vision: VisionModel | None) -> tuple[tuple[ImageSpan, ...], VisionState | None]:
    """The spans and runner state of a request's images; raises `ImageError` naming what is wrong with them.

    A prompt without images must hold no image tokens either (the model would read them as an empty image)."""
    if vision is None:
        if submit.images:
            raise ImageError("this model takes no images")
        return (), None
    prompt = submit.prompt_ids
    starts = _image_starts(prompt, vision.image_token_id, [image.num_tokens for image in submit.images])
    sized = []
    for index, image in enumerate(submit.images):
        picture = vision.size(image.data)
        if picture.num_tokens != image.num_tokens:
            raise ImageError(
                f"image {index} gives {picture.num_tokens} image tokens for this model (grid {picture.grid_thw}), "
                f"but the prompt holds {image.num_tokens}"
            )
        sized.append(picture)
    if not sized:
        return (), None
    positions, delta = vision.positions(prompt, [picture.grid_thw for picture in sized])
    spans = tuple(
        ImageSpan(start, image.num_tokens, image.content_hash)
        for start, image in zip(starts, submit.images, strict=True)
    )
    pixels = {index: vision.preprocess(picture) for index, picture in enumerate(sized)}
    return spans, VisionState(sized, positions, delta, pixels)


def _image_starts(prompt: tuple[int, ...], image_token_id: int, counts: list[int]) -> list[int]:
    """Where each image's run of `counts[i]` image tokens starts; every image token belongs to one image."""
    where = [i for i, token_id in enumerate(prompt) if token_id == image_token_id]
    if len(where) != sum(counts):
        raise ImageError(
            f"the prompt holds {len(where)} image tokens, but its {len(counts)} images need {sum(counts)}"
        )
    starts, offset = [], 0
    for index, count in enumerate(counts):
        start = where[offset]
        if where[offset + count - 1] != start + count - 1:
            raise ImageError(f"the {count} tokens of image {index} are not one run in the prompt")
        starts.append(start)
        offset += count
    return starts


def pending_images(chunk: PrefillChunk) -> list[int]:
    """The indices of the images of `chunk`'s request that it reaches and that have no embeddings yet."""
    state: VisionState | None = chunk.seq.vision
    if state is None:
        return []
    end = chunk.start + len(chunk.token_ids)
    return [
        index
        for index, span in enumerate(chunk.seq.images)
        if span.overlaps(chunk.start, end) and index not in state.embeddings
    ]


def encode_images(chunks: list[PrefillChunk], vision: VisionModel) -> list[tuple[Sequence, ImageError]]:
    """Run the vision tower once over every image the chunks reach that has no embeddings yet; returns the
    requests whose image turned out broken past its header (they are left out of the tower's forward)."""
    pending: list[tuple[VisionState, int, torch.Tensor]] = []
    failed: list[tuple[Sequence, ImageError]] = []
    for chunk in chunks:
        state: VisionState = chunk.seq.vision
        try:
            ready = [(index, _pixel_values(state, index, vision)) for index in pending_images(chunk)]
        except ImageError as exc:
            failed.append((chunk.seq, exc))
            continue
        pending.extend((state, index, pixels) for index, pixels in ready)
    if pending:
        grids = [state.images[index].grid_thw for state, index, _ in pending]
        embeddings = vision.encode([pixels for _, _, pixels in pending], grids)
        for (state, index, _), embeds in zip(pending, embeddings, strict=True):
            state.embeddings[index] = embeds
    return failed


def _pixel_values(state: VisionState, index: int, vision: VisionModel) -> torch.Tensor:
    """An image's pixel values, waiting for its preprocessing if it is still running; a recomputation after a
    preemption (the first pixel values went to the tower) preprocesses the image again."""
    future = state.pixels.pop(index, None) or vision.preprocess(state.images[index])
    return future.result()


def vision_inputs(
    chunks: list[PrefillChunk], token_ids: torch.Tensor, positions: torch.Tensor, embed: torch.nn.Module
) -> VisionInputs:
    """The inputs of a prefill forward over `chunks` (rows padded to one length) when some have images.

    token_ids, positions: [G, L] on the device; rows without images keep their 1-D positions on all three axes.
    """
    rope = positions[None].repeat(3, 1, 1)  # [3, G, L]
    embeds = embed(token_ids)  # [G, L, hidden_size]
    for row, chunk in enumerate(chunks):
        state: VisionState | None = chunk.seq.vision
        if state is None:
            continue
        start, end = chunk.start, chunk.start + len(chunk.token_ids)
        rope[:, row, : end - start] = state.rope_positions(start, end).to(rope.device)
        for index, span in enumerate(chunk.seq.images):
            if span.overlaps(start, end):
                first, last = max(start, span.start), min(end, span.end)
                image_rows = state.embeddings[index][first - span.start : last - span.start]
                embeds[row, first - start : last - start] = image_rows
    return VisionInputs(rope, embeds)


def release_prefilled(chunks: list[PrefillChunk]) -> None:
    """Drop the embeddings of images whose last token a chunk just prefilled."""
    for chunk in chunks:
        state = chunk.seq.vision
        if state is not None:
            end = chunk.start + len(chunk.token_ids)
            for index, span in enumerate(chunk.seq.images):
                if span.end <= end:
                    state.embeddings.pop(index, None)


def rope_delta(seq: Sequence) -> int:
    """What a decode step adds to the cache position for the rotary embedding: 0 for a text-only request."""
    return 0 if seq.vision is None else seq.vision.rope_delta
