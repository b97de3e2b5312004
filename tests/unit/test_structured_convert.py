"""The HTTP face's constrained-output fields to one `Constraint` (openai_api/structured.py), and the gRPC oneof
(grpc_api/convert.py): every spelling, and what is refused, with no server."""

from __future__ import annotations

import json

import pytest

from autoglm.v1 import generation_pb2, types_pb2
from autoglm_rpc.core import errors
from autoglm_rpc.core.requests import RequestLimits
from autoglm_rpc.grpc_api.convert import generation_request
from autoglm_rpc.openai_api import convert, schemas
from workers.protocol import Constraint, ConstraintKind

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
JSON_SCHEMA = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(SCHEMA))
ANY_OBJECT = Constraint(ConstraintKind.JSON_OBJECT)


def _chat(**fields: object) -> Constraint | None:
    body = schemas.ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **fields)
    return convert.chat_request(body, RequestLimits()).constraint


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"response_format": {"type": "text"}}, None),
        ({"response_format": {"type": "json_object"}}, ANY_OBJECT),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, ANY_OBJECT),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}}, JSON_SCHEMA),
        ({"structured_outputs": {"json": SCHEMA}}, JSON_SCHEMA),
        ({"structured_outputs": {"json": json.dumps(SCHEMA), "disable_any_whitespace": True}}, JSON_SCHEMA),
        ({"structured_outputs": {"json_object": True}}, Constraint(ConstraintKind.JSON_OBJECT)),
        ({"structured_outputs": {"regex": "[0-9]+"}}, Constraint(ConstraintKind.REGEX, "[0-9]+")),
        ({"guided_choice": ["a", "b"]}, Constraint(ConstraintKind.CHOICE, '["a", "b"]')),
        ({"guided_grammar": 'start: "x"'}, Constraint(ConstraintKind.GRAMMAR, 'start: "x"')),
        ({"guided_json": SCHEMA}, JSON_SCHEMA),
    ],
)  # fmt: skip
def test_every_spelling_gives_its_constraint(fields: dict, expected: Constraint | None) -> None:
    assert _chat(**fields) == expected


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
        ({"structured_outputs": {"structural_tag": {"x": 1}}}, "structured_outputs.structural_tag"),
        ({"guided_whitespace_pattern": " "}, "guided_whitespace_pattern"),
        ({"guided_json": SCHEMA, "guided_regex": "a"}, "guided_regex"),
        ({"guided_json": "[1, 2]"}, "guided_json"),
        ({"guided_choice": ["ok", ""]}, "guided_choice[1]"),
        ({"guided_regex": "x" * 100_001}, "guided_regex"),
    ],
)
def test_what_is_refused_is_named(fields: dict, param: str) -> None:
    with pytest.raises(errors.InvalidParameter) as caught:
        _chat(**fields)
    assert caught.value.field == param


def test_the_grpc_oneof() -> None:
    def constraint(**output: object) -> Constraint | None:
        message = generation_pb2.GenerateRequest(prompt="x", output=types_pb2.OutputOptions(**output))
        return generation_request(message).constraint

    assert constraint() is None and constraint(json_object=False) is None
    assert constraint(json_schema=json.dumps(SCHEMA)) == JSON_SCHEMA
    assert constraint(json_object=True) == Constraint(ConstraintKind.JSON_OBJECT)
    assert constraint(choice=types_pb2.Choice(options=["a", "b"])) == Constraint(
        ConstraintKind.CHOICE, '["a", "b"]'
    )
    with pytest.raises(errors.InvalidParameter) as caught:
        constraint(choice=types_pb2.Choice())
    assert caught.value.field == "output.choice.options"
    with pytest.raises(errors.InvalidParameter) as caught:
        constraint(grammar="start: nowhere")
    assert caught.value.field == "output.grammar"
