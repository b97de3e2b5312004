"""Chat rendering equals transformers' apply_chat_template, for the checkpoint's template and real-world shapes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import pytest

from autoglm_rpc.text import (
    ChatMessage,
    ChatTemplateError,
    ChatTemplateMissing,
    CheckpointFileError,
    TextTokenizer,
)

# Qwen2-style ChatML: a default system prompt unless the chat opens with one.
CHATML_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'system' and loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Mistral/Llama-2 style: BOS and EOS variables, roles checked with raise_exception.
ALTERNATING_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# The environment's extras: block whitespace control, namespace, loop controls, tojson, dict, generation tag.
FEATURES_TEMPLATE = """\
{% set ns = namespace(count=0) %}
{% for message in messages %}
  {% if message.role == 'system' %}{% continue %}{% endif %}
  {% set ns.count = ns.count + 1 %}
<{{ message.role }} n={{ ns.count }}>{{ message.content | tojson }}
  {% if message.role == 'assistant' %}{% generation %}[{{ message.content }}]{% endgeneration %}{% endif %}
{% endfor %}
{{ dict(a=1, b='é<&>') | tojson }} {{ eos_token }} {{ strftime_now('%Y') }}
{% if add_generation_prompt %}<assistant>
{% endif %}
"""

CONVERSATIONS = [
    [ChatMessage("user", "Hi")],
    [
        ChatMessage("system", 'Answer in <b>few</b> words & "quotes".'),
        ChatMessage("user", "你好，世界！ 😀"),
        ChatMessage("assistant", "Straße…\n  indented"),
        ChatMessage("user", "Why?"),
    ],
    [ChatMessage("user", "one"), ChatMessage("assistant", "two"), ChatMessage("user", "three")],
]


def _as_dicts(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": message.role, "content": message.content} for message in messages]


def _assert_same_as_transformers(path: Path, hf_tokenizer: Callable[[Path], Any]) -> None:
    ours, reference = TextTokenizer.from_dir(path), hf_tokenizer(path)
    for messages in CONVERSATIONS:
        for add_generation_prompt in (True, False):
            try:
                expected_text = reference.apply_chat_template(
                    _as_dicts(messages), tokenize=False, add_generation_prompt=add_generation_prompt
                )
            except jinja2.TemplateError as error:
                with pytest.raises(ChatTemplateError) as raised:
                    ours.render_chat(messages, add_generation_prompt)
                assert raised.value.message == str(error)
                continue
            expected_ids = reference.apply_chat_template(
                _as_dicts(messages), tokenize=True, add_generation_prompt=add_generation_prompt
            )["input_ids"]
            assert ours.render_chat(messages, add_generation_prompt) == expected_text
            assert ours.encode_chat(messages, add_generation_prompt) == list(expected_ids)


def test_checkpoint_template_matches_transformers(glm_dir: Path, hf_tokenizer: Callable[[Path], Any]) -> None:
    _assert_same_as_transformers(glm_dir, hf_tokenizer)
    assert TextTokenizer.from_dir(glm_dir).has_chat_template


@pytest.mark.parametrize(
    ("template", "tokenizer_config"),
    [
        (CHATML_TEMPLATE, None),
        (ALTERNATING_TEMPLATE, {"bos_token": "<s>"}),
        (FEATURES_TEMPLATE, None),
    ],
    ids=["chatml", "alternating", "features"],
)
def test_real_world_templates_match_transformers(
    template: str,
    tokenizer_config: dict[str, Any] | None,
    glm_dir: Path,
    make_variant: Callable[..., Path],
    hf_tokenizer: Callable[[Path], Any],
) -> None:
    path = make_variant(glm_dir, chat_template=template, tokenizer_config=tokenizer_config)
    _assert_same_as_transformers(path, hf_tokenizer)


def test_raise_exception_becomes_a_typed_error(glm_dir: Path, make_variant: Callable[..., Path]) -> None:
    tokenizer = TextTokenizer.from_dir(make_variant(glm_dir, chat_template=ALTERNATING_TEMPLATE))
    with pytest.raises(ChatTemplateError, match="roles must alternate") as raised:
        tokenizer.encode_chat([ChatMessage("assistant", "I speak first")])
    assert raised.value.message == "Conversation roles must alternate user/assistant/user/assistant/..."


def test_template_misuse_of_data_becomes_a_typed_error(glm_dir: Path, make_variant: Callable[..., Path]) -> None:
    template = "{{ messages[3]['content'] }}{{ namespace(_private=1) }}"
    tokenizer = TextTokenizer.from_dir(make_variant(glm_dir, chat_template=template))
    with pytest.raises(ChatTemplateError):
        tokenizer.render_chat([ChatMessage("user", "hi")])


def test_no_template_raises_chat_template_missing(no_template_dir: Path) -> None:
    tokenizer = TextTokenizer.from_dir(no_template_dir)
    assert not tokenizer.has_chat_template
    with pytest.raises(ChatTemplateMissing):
        tokenizer.render_chat([ChatMessage("user", "hi")])
    with pytest.raises(ChatTemplateMissing):
        tokenizer.encode_chat([ChatMessage("user", "hi")])


def test_empty_chat_is_a_template_error(glm_dir: Path) -> None:
    with pytest.raises(ChatTemplateError, match="at least one message"):
        TextTokenizer.from_dir(glm_dir).render_chat([])


def test_template_from_tokenizer_config_string(
    no_template_dir: Path, make_variant: Callable[..., Path], hf_tokenizer: Callable[[Path], Any]
) -> None:
    path = make_variant(no_template_dir, tokenizer_config={"chat_template": CHATML_TEMPLATE})
    _assert_same_as_transformers(path, hf_tokenizer)


def test_named_templates_pick_default(
    no_template_dir: Path, make_variant: Callable[..., Path], hf_tokenizer: Callable[[Path], Any]
) -> None:
    templates = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": CHATML_TEMPLATE}]
    path = make_variant(no_template_dir, tokenizer_config={"chat_template": templates})
    _assert_same_as_transformers(path, hf_tokenizer)


def test_named_templates_without_default_mean_no_template(
    no_template_dir: Path, make_variant: Callable[..., Path]
) -> None:
    path = make_variant(no_template_dir, tokenizer_config={"chat_template": [{"name": "rag", "template": "x"}]})
    assert not TextTokenizer.from_dir(path).has_chat_template


def test_jinja_file_wins_over_config_entry(glm_dir: Path, make_variant: Callable[..., Path]) -> None:
    path = make_variant(glm_dir, tokenizer_config={"chat_template": "FROM CONFIG"}, chat_template="FROM FILE")
    assert TextTokenizer.from_dir(path).render_chat([ChatMessage("user", "hi")]) == "FROM FILE"


def test_template_that_does_not_compile_fails_at_load(glm_dir: Path, make_variant: Callable[..., Path]) -> None:
    path = make_variant(glm_dir, chat_template="{% for message in messages %}")
    with pytest.raises(CheckpointFileError, match="chat template"):
        TextTokenizer.from_dir(path)


def test_any_message_type_with_role_and_content_is_accepted(glm_dir: Path) -> None:
    class Turn:
        def __init__(self, role: str, content: str) -> None:
            self.role, self.content = role, content

    tokenizer = TextTokenizer.from_dir(glm_dir)
    assert tokenizer.render_chat([Turn("user", "hi")]) == tokenizer.render_chat([ChatMessage("user", "hi")])
