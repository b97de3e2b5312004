"""Constraints on a request's output (constrained decoding), built and checked once at the edge.

Each face turns its own fields into a `workers.protocol.Constraint` with the functions here, passing the field's
name as its caller spells it (`response_format.json_schema.schema`, `guided_regex`, `output.regex`). Each
constraint is compiled here by llguidance, the library the workers mask tokens with (its Python package is
torch-free and has no dependencies; without a tokenizer it checks the grammar alone), so a schema, regex or grammar
that does not compile is an `InvalidParameter` naming the field before any worker sees it. The worker compiles
it again against its tokenizer; what only that finds fails the request with INVALID_PARAMETER as well.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import llguidance

from autoglm_rpc.core.errors import InvalidParameter
from workers.protocol import Constraint, ConstraintKind

MAX_SPEC_CHARS = 100_000  # a schema, regex or grammar (as text)
MAX_CHOICES = 1024
MAX_CHOICE_CHARS = 1024
# The workers' JSON options (workers/engine/grammar.py): what they compile must be what was checked here.
_JSON_OPTIONS: llguidance.JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


def json_schema(field: str, schema: Any) -> Constraint:
    """A JSON Schema (an object, or its JSON text): the output is one JSON value it validates."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise InvalidParameter(field, f"is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise InvalidParameter(field, "must be a JSON Schema object")
    spec = json.dumps(schema)
    return _checked(field, Constraint(ConstraintKind.JSON_SCHEMA, _bounded(field, spec)))


def json_object() -> Constraint:
    """Any JSON object (OpenAI's `json_object` response format)."""
    return Constraint(ConstraintKind.JSON_OBJECT)


def regex(field: str, pattern: str) -> Constraint:
    """A regular expression (Rust `regex` syntax, no look-around) the whole output matches."""
    if not pattern:
        raise InvalidParameter(field, "must not be empty")
    return _checked(field, Constraint(ConstraintKind.REGEX, _bounded(field, pattern)))


def choice(field: str, options: Sequence[str]) -> Constraint:
    """Exactly one of `options`."""
    if not options or len(options) > MAX_CHOICES:
        raise InvalidParameter(field, f"needs 1 to {MAX_CHOICES} strings")
    for index, option in enumerate(options):
        if not isinstance(option, str) or not 0 < len(option) <= MAX_CHOICE_CHARS:
            raise InvalidParameter(f"{field}[{index}]", f"must be a string of 1 to {MAX_CHOICE_CHARS} characters")
    return _checked(field, Constraint(ConstraintKind.CHOICE, json.dumps(list(options))))


def grammar(field: str, text: str) -> Constraint:
    """A context-free grammar: Lark syntax (llguidance's dialect; `start` is the top rule) or llama.cpp's GBNF."""
    if not text.strip():
        raise InvalidParameter(field, "must not be empty")
    return _checked(field, Constraint(ConstraintKind.GRAMMAR, _bounded(field, text)))


def _bounded(field: str, spec: str) -> str:
    if len(spec) > MAX_SPEC_CHARS:
        raise InvalidParameter(field, f"at most {MAX_SPEC_CHARS} characters")
    return spec


def _checked(field: str, constraint: Constraint) -> Constraint:
    """`constraint` if llguidance compiles it; else InvalidParameter naming `field` with the library's reason."""
    error = _compile_error(constraint.kind, constraint.spec)
    if error:
        raise InvalidParameter(field, f"does not compile: {error}")
    return constraint


# Agents send the same schema with every turn: a repeat is not compiled again (a 50 kB schema takes about 20 ms
# on the event loop, a small one half a millisecond).
@functools.lru_cache(maxsize=256)
def _compile_error(kind: ConstraintKind, spec: str) -> str:
    """Why llguidance cannot compile (kind, spec) without a tokenizer; "" when it can."""
    try:
        match kind:
            case ConstraintKind.JSON_SCHEMA:
                text = llguidance.LLMatcher.grammar_from_json_schema(spec, defaults=_JSON_OPTIONS)
            case ConstraintKind.REGEX:
                text = llguidance.LLMatcher.grammar_from_regex(spec)
            case ConstraintKind.CHOICE:
                text = llguidance.grammar_from("choice", spec)
            case _:
                text = llguidance.grammar_from("grammar", spec)
    except ValueError as exc:
        return str(exc)
    return llguidance.LLMatcher.validate_grammar(text)
