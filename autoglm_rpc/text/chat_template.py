"""Chat templates rendered exactly as transformers' `apply_chat_template(..., tokenize=False)` renders them.

Templates come from checkpoints, which are untrusted: they run in jinja2's immutable sandbox with the same
environment transformers builds (trim_blocks, lstrip_blocks, loop controls, the `{% generation %}` tag, and the
globals `raise_exception`, `strftime_now`, `dict`, `namespace` and the JSON `tojson` filter), so a template renders
here to the same string it renders to there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from autoglm_rpc.text.errors import ChatTemplateError, CheckpointFileError

logger = logging.getLogger(__name__)

# Python errors a template can provoke from the caller's data (indexing past the end, adding str and int, ...).
_TEMPLATE_DATA_ERRORS = (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError)


class ChatTurn(Protocol):
    """What a chat message must offer: `ChatMessage`, or any other type with these two attributes. `content` is
    text, or a list of parts (`{"type": "text", "text": ...}`, `{"type": "image"}`) for a template that takes
    them, passed to the template as they are (as transformers passes them)."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str | Sequence[Mapping[str, str]]: ...


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation: `role` ("system", "user", "assistant", ...) and its text."""

    role: str
    content: str


class ChatTemplate:
    """A compiled chat template; `render` is safe to call from any thread (the template is immutable)."""

    def __init__(self, source: str) -> None:
        """Compile `source`. Raises CheckpointFileError when it is not valid jinja."""
        self.source = source
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise CheckpointFileError(f"the chat template does not compile: {error}") from error

    def render(
        self,
        messages: Sequence[ChatTurn],
        *,
        add_generation_prompt: bool,
        variables: Mapping[str, str],
    ) -> str:
        """Render `messages` as transformers does, with `variables` (the named special tokens) in scope.

        Raises ChatTemplateError when there are no messages or the template fails on them (a `raise_exception`
        call, an undefined value, a type error); its message is the template's own.
        """
        if not messages:
            raise ChatTemplateError("a chat needs at least one message")
        chat = [{"role": message.role, "content": message.content} for message in messages]
        try:
            return self._template.render(
                **dict(variables),
                messages=chat,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
            )
        except _TEMPLATE_DATA_ERRORS as error:
            logger.debug("chat template failed: %s", error)
            raise ChatTemplateError(str(error) or type(error).__name__) from error


def parse_template(source: str) -> nodes.Template:
    """The syntax tree of a template, parsed by the environment `ChatTemplate` compiles with (its tags known);
    raises jinja2.TemplateSyntaxError. For reading what a template expects, never for rendering."""
    return _environment().parse(source)


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text (for training masks); renders the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return caller()


class _TemplateDict:
    """`dict(...)` for templates, without exposing the dict type itself (as transformers does)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A jinja namespace that refuses underscore-prefixed names, so templates cannot reach CPython internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        # Same signature trick as jinja's Namespace, so that `namespace(self=...)` still works.
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot store the attribute {name!r}")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # jinja's own tojson escapes HTML characters; templates expect plain JSON.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format_string: str) -> str:
    return datetime.now().strftime(format_string)


def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    environment.globals["dict"] = _TemplateDict()
    environment.globals["namespace"] = _TemplateNamespace
    return environment
