"""A gateway-only GLM-4.1V checkpoint directory (no weights): a tokenizer.json holding GLM-4.1V's special
tokens, GLM-4.1V's chat template, a config.json with image_token_id / vision_config and a preprocessor_config.json,
which is all the gateway reads of a vision checkpoint. Also small encoded images to send."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

from workers.model.checkpoints import train_tokenizer

GLM4V_SPECIAL_TOKENS = (
    "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>", "<|end_of_image|>",
    "<|image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>",
)  # fmt: skip

# GLM-4.1V-9B's chat_template.jinja (the parts it renders: system, user text and images, assistant).
GLM4V_CHAT_TEMPLATE = """[gMASK]<sop>
{%- for msg in messages %}
    {%- if msg.role == 'system' %}
<|system|>
{{ msg.content }}
    {%- elif msg.role == 'user' %}
<|user|>{{ '\\n' }}
        {%- if msg.content is string %}
{{ msg.content }}
        {%- else %}
            {%- for item in msg.content %}
                {%- if item.type == 'video' or 'video' in item %}
<|begin_of_video|><|video|><|end_of_video|>
                {%- elif item.type == 'image' or 'image' in item %}
<|begin_of_image|><|image|><|end_of_image|>
                {%- elif item.type == 'text' %}
{{ item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
    {%- elif msg.role == 'assistant' %}
<|assistant|>
{{ msg.content }}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}<|assistant|>
{% endif %}"""

# A template that takes string content only (as most text models' do).
STRING_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

PREPROCESSOR = {
    "image_processor_type": "Glm4vImageProcessor",
    "size": {"shortest_edge": 12544, "longest_edge": 9633792},
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
}


def build_vision_files(path: Path, chat_template: str = GLM4V_CHAT_TEMPLATE, max_positions: int = 8192) -> Path:
    """Write the directory at `path` and return it."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(400)
    tokenizer.add_special_tokens(list(GLM4V_SPECIAL_TOKENS))
    tokenizer.save(str(path / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in GLM4V_SPECIAL_TOKENS}
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {"eos_token": "<|endoftext|>", "chat_template": chat_template, "model_max_length": max_positions}
        )
    )
    config = {
        "architectures": ["Glm4vForConditionalGeneration"],
        "model_type": "glm4v",
        "image_token_id": ids["<|image|>"],
        "image_start_token_id": ids["<|begin_of_image|>"],
        "image_end_token_id": ids["<|end_of_image|>"],
        "video_token_id": ids["<|video|>"],
        "text_config": {"max_position_embeddings": max_positions, "eos_token_id": 0, "vocab_size": 420},
        "vision_config": {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        "max_position_embeddings": max_positions,
    }
    (path / "config.json").write_text(json.dumps(config))
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return path


def image_bytes(width: int = 56, height: int = 84, kind: str = "PNG") -> bytes:
    """An encoded image of `kind` (PNG, JPEG, WEBP) with some structure in it."""
    image = Image.new("RGB", (width, height), (30, 120, 200))
    for x in range(0, width, 7):
        image.putpixel((x, x % height), (255, 0, 0))
    out = io.BytesIO()
    image.save(out, format=kind)
    return out.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"
