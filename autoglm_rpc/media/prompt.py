"""A chat with images to prompt ids: the template renders each image as its placeholder, the text is tokenized,
then each image's single image token is expanded into its run of `num_tokens` (the count of placeholders must
equal the number of images, in order).

With the content format "openai" a message with images goes to the template as a list of parts
(`{"type": "text", "text": ...}`, `{"type": "image"}`), as transformers' `apply_chat_template` passes it to
GLM-4.1V's template; with "string" its parts are joined into one string, each image as the checkpoint's
placeholder (`<|begin_of_image|><|image|><|end_of_image|>`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autoglm_rpc.core.errors import ImageOverflowsContext, InvalidParameter
from autoglm_rpc.core.requests import ChatMessage, TextPart
from autoglm_rpc.media.vision import VisionSpec
from autoglm_rpc.text.tokenizer import TextTokenizer


@dataclass(frozen=True, slots=True)
class _Turn:
    """A message as the chat template sees it (content a string or a list of parts)."""

    role: str
    content: str | list[dict[str, str]]


def template_turns(messages: Sequence[ChatMessage], content_format: str, spec: VisionSpec) -> list[_Turn]:
    """The messages as the template takes them: text messages as they are, those with parts in `content_format`."""
    turns = []
    for message in messages:
        if not message.parts:
            turns.append(_Turn(message.role, message.content))
        elif content_format == "openai":
            items = [
                {"type": "text", "text": part.text} if isinstance(part, TextPart) else {"type": "image"}
                for part in message.parts
            ]
            turns.append(_Turn(message.role, items))
        else:
            text = "".join(part.text if isinstance(part, TextPart) else spec.placeholder for part in message.parts)
            turns.append(_Turn(message.role, text))
    return turns


def expand_images(ids: Sequence[int], spec: VisionSpec, num_tokens: Sequence[int]) -> tuple[list[int], list[int]]:
    """`ids` with the k-th image token replaced by `num_tokens[k]` of them, and where each run starts.
    InvalidParameter when the rendered chat holds another number of image tokens than there are images (a text
    part may spell the image token)."""
    positions = [index for index, token_id in enumerate(ids) if token_id == spec.image_token_id]
    if len(positions) != len(num_tokens):
        raise InvalidParameter(
            "chat.messages",
            f"the rendered chat has {len(positions)} image placeholders ({spec.image_token}) for "
            f"{len(num_tokens)} images; text must not spell the image token",
        )
    expanded: list[int] = []
    starts: list[int] = []
    start = 0
    for position, count in zip(positions, num_tokens, strict=True):
        expanded.extend(ids[start:position])
        starts.append(len(expanded))
        expanded.extend([spec.image_token_id] * count)
        start = position + 1
    expanded.extend(ids[start:])
    return expanded, starts


def encode_with_images(
    tokenizer: TextTokenizer,
    messages: Sequence[ChatMessage],
    *,
    add_generation_prompt: bool,
    spec: VisionSpec,
    content_format: str,
    num_tokens: Sequence[int],
) -> tuple[list[int], list[int]]:
    """Prompt ids of a chat whose images take `num_tokens` tokens each (in prompt order), and where each
    image's run starts."""
    turns = template_turns(messages, content_format, spec)
    ids = tokenizer.encode_chat(turns, add_generation_prompt)  # type: ignore[arg-type]
    return expand_images(ids, spec, num_tokens)


def check_image_fit(
    starts: Sequence[int], num_tokens: Sequence[int], fields: Sequence[str], budget: int, limit: int
) -> None:
    """Raise ImageOverflowsContext naming the first image whose run ends past `budget` (the prompt tokens the
    context leaves room for); nothing when every image fits (the prompt may still pass it in text)."""
    for start, count, field in zip(starts, num_tokens, fields, strict=True):
        if start + count > budget:
            raise ImageOverflowsContext(
                field,
                f"the prompt passes the context limit ({limit} tokens, prompt plus output) inside this image "
                f"(tokens {start} to {start + count - 1}; it takes {count})",
            )
