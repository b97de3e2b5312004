"""The HTTP face's constrained-output fields to one `Constraint` (checked by `core/constraints.py`).

Three spellings, at most one per request: OpenAI's `response_format` (`text` is no constraint, `json_object`,
`json_schema` whose schema is enforced whether `strict` is set or not), vLLM's `structured_outputs` object
(`json`, `regex`, `choice`, `grammar`, `json_object`), and vLLM's older top-level `guided_json`, `guided_regex`,
`guided_choice`, `guided_grammar`. Errors name the field as the caller spelled it.
"""

from __future__ import annotations

from autoglm_rpc.core import constraints
from autoglm_rpc.core.errors import InvalidParameter
from autoglm_rpc.openai_api import schemas
from workers.protocol import Constraint

_GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


def constraint(body: schemas._Sampling) -> Constraint | None:
    """The request's output constraint, or None; InvalidParameter when two are set or one does not compile."""
    if body.guided_whitespace_pattern is not None:
        raise InvalidParameter("guided_whitespace_pattern", "not supported by this server")
    found = [
        (name, value)
        for name, value in (
            ("response_format", _response_format(body.response_format)),
            ("structured_outputs", _structured_outputs(body.structured_outputs)),
            *((name, _guided(name, getattr(body, name))) for name in _GUIDED),
        )
        if value is not None
    ]
    if len(found) > 1:
        raise InvalidParameter(found[1][0], f"set only one of {found[0][0]} and {found[1][0]}")
    return found[0][1] if found else None


def _response_format(value: schemas.ResponseFormat | None) -> Constraint | None:
    if value is None or value.type == "text":
        return None
    if value.type == "json_object":
        return constraints.json_object()
    if value.type != "json_schema":
        problem = f"must be text, json_object or json_schema, not {value.type!r}"
        raise InvalidParameter("response_format.type", problem)
    if value.json_schema is None:
        raise InvalidParameter("response_format.json_schema", "is required when type is json_schema")
    schema = value.json_schema.schema_
    if schema is None:  # OpenAI's schema is optional: then any JSON object
        return constraints.json_object()
    return constraints.json_schema("response_format.json_schema.schema", schema)


def _structured_outputs(value: schemas.StructuredOutputs | None) -> Constraint | None:
    if value is None:
        return None
    for name in ("whitespace_pattern", "structural_tag"):
        if getattr(value, name) is not None:
            raise InvalidParameter(f"structured_outputs.{name}", "not supported by this server")
    found = []
    if value.json_ is not None:
        found.append(constraints.json_schema("structured_outputs.json", value.json_))
    if value.regex is not None:
        found.append(constraints.regex("structured_outputs.regex", value.regex))
    if value.choice is not None:
        found.append(constraints.choice("structured_outputs.choice", value.choice))
    if value.grammar is not None:
        found.append(constraints.grammar("structured_outputs.grammar", value.grammar))
    if value.json_object:
        found.append(constraints.json_object())
    if len(found) > 1:
        raise InvalidParameter("structured_outputs", "set only one of json, regex, choice, grammar, json_object")
    return found[0] if found else None


def _guided(name: str, value: object) -> Constraint | None:
    match name, value:
        case _, None:
            return None
        case "guided_json", _:
            return constraints.json_schema(name, value)
        case "guided_regex", str():
            return constraints.regex(name, value)
        case "guided_choice", list():
            return constraints.choice(name, value)
        case "guided_grammar", str():
            return constraints.grammar(name, value)
    raise InvalidParameter(name, "has the wrong type")
