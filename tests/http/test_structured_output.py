"""Constrained output through a real server (the session's tiny GLM: random weights, so only the token mask makes
the output valid): the `openai` SDK's response_format (and its `parse`), vLLM's structured_outputs and guided_*
fields, the same over gRPC, and a constraint that does not compile refused with a 400 naming its field."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

import grpc
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from autoglm.v1 import types_pb2
from autoglm_rpc.client import AutoglmError
from tests.support import ServerThread

CHAT = [{"role": "user", "content": "Describe a pet as JSON."}]
SEEDS = (1, 2, 3)
SCHEMAS = {
    "flat": {
        "type": "object",
        "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999}, "ok": {"type": "boolean"}},
        "required": ["id", "ok"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "owner": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 6}, "vip": {"type": "boolean"}},
                "required": ["name", "vip"],
                "additionalProperties": False,
            },
            "color": {"enum": ["red", "green", "blue"]},
        },
        "required": ["owner", "color"],
        "additionalProperties": False,
    },
    "arrays": {
        "type": "object",
        "properties": {
            "scores": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
            "labels": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 4},
        },
        "required": ["scores", "labels"],
        "additionalProperties": False,
    },
    "refs": {
        "$defs": {
            "point": {
                "type": "object",
                "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9}},
                "required": ["x"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {"points": {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 2}},
        "required": ["points"],
        "additionalProperties": False,
    },
}


class Pet(BaseModel):
    name: Annotated[str, Field(max_length=8)]
    kind: Literal["cat", "dog", "fish"]
    age: Annotated[int, Field(ge=0, le=30)]
    toys: Annotated[list[Literal["ball", "rope"]], Field(max_length=3)]


def _sdk(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.app.http.port}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def sdk(glm_server: ServerThread) -> openai.OpenAI:
    return _sdk(glm_server)


def _chat(sdk: openai.OpenAI, seed: int = 0, temperature: float = 1.0, max_tokens: int = 200, **extra):
    return sdk.chat.completions.create(
        model="tiny-glm", messages=CHAT, max_tokens=max_tokens, temperature=temperature, seed=seed, **extra
    )


def test_parse_returns_the_pydantic_object(sdk: openai.OpenAI) -> None:
    for seed in SEEDS:
        completion = sdk.chat.completions.parse(
            model="tiny-glm", messages=CHAT, response_format=Pet, max_tokens=200, temperature=1.0, seed=seed
        )
        pet = completion.choices[0].message.parsed
        assert isinstance(pet, Pet), completion.choices[0].message.content
        assert completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_output_validates(sdk: openai.OpenAI, name: str) -> None:
    schema = SCHEMAS[name]
    response_format = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    for seed in SEEDS:
        choice = _chat(sdk, seed, response_format=response_format).choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_object_is_an_object_and_text_is_free(sdk: openai.OpenAI) -> None:
    for seed in SEEDS:
        reply = _chat(sdk, seed, response_format={"type": "json_object"}, max_tokens=60)
        content = reply.choices[0].message.content
        try:
            assert isinstance(json.loads(content), dict)
        except json.JSONDecodeError:  # random weights may fill 60 tokens before closing: still an object's prefix
            assert content.startswith("{")
    free = _chat(sdk, 5, temperature=0, max_tokens=12, response_format={"type": "text"}).choices[0].message
    assert free.content == _chat(sdk, 5, temperature=0, max_tokens=12).choices[0].message.content


def test_regex_and_choice_every_spelling(sdk: openai.OpenAI) -> None:
    pattern, options = r"[A-Z][a-z]{1,5} [0-9]{2}", ["yes", "no", "maybe later"]
    for seed in SEEDS:
        for extra in ({"structured_outputs": {"regex": pattern}}, {"guided_regex": pattern}):
            text = _chat(sdk, seed, extra_body=extra).choices[0].message.content
            assert re.fullmatch(pattern, text), (extra, text)
        for extra in ({"structured_outputs": {"choice": options}}, {"guided_choice": options}):
            assert _chat(sdk, seed, extra_body=extra).choices[0].message.content in options
        completion = sdk.completions.create(
            model="tiny-glm", prompt="Answer:", max_tokens=40, temperature=1.0, seed=seed,
            extra_body={"guided_json": SCHEMAS["flat"]},
        )  # fmt: skip
        jsonschema.validate(json.loads(completion.choices[0].text), SCHEMAS["flat"])


def test_a_grammar_constrains(sdk: openai.OpenAI) -> None:
    grammar = 'start: "(" expr ")"\nexpr: NUMBER | NUMBER "+" expr\nNUMBER: /[0-9]{1,2}/'
    for seed in SEEDS:
        text = _chat(sdk, seed, extra_body={"structured_outputs": {"grammar": grammar}}).choices[0].message.content
        assert re.fullmatch(r"\([0-9]{1,2}(\+[0-9]{1,2})*\)", text), text


def test_streamed_and_unary_agree_for_greedy(sdk: openai.OpenAI) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMAS["nested"]}}
    whole = _chat(sdk, temperature=0, response_format=response_format).choices[0].message.content
    stream = _chat(sdk, temperature=0, response_format=response_format, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    jsonschema.validate(json.loads(whole), SCHEMAS["nested"])


def test_max_tokens_mid_object_is_length(sdk: openai.OpenAI) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMAS["nested"]}}
    choice = _chat(sdk, 1, response_format=response_format, max_tokens=3).choices[0]
    assert choice.finish_reason == "length" and choice.message.content.startswith("{")


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
         "response_format.json_schema.schema"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"extra_body": {"guided_regex": "[a-z"}}, "guided_regex"),
        ({"extra_body": {"structured_outputs": {"regex": "(?=a)b"}}}, "structured_outputs.regex"),
        ({"extra_body": {"structured_outputs": {"grammar": "start: missing"}}}, "structured_outputs.grammar"),
        ({"extra_body": {"guided_choice": []}}, "guided_choice"),
        ({"extra_body": {"guided_json": "{not json"}}, "guided_json"),
        ({"response_format": {"type": "json_object"}, "extra_body": {"guided_regex": "a"}}, "guided_regex"),
    ],
)  # fmt: skip
def test_a_bad_constraint_is_a_400_naming_its_field(sdk: openai.OpenAI, extra: dict, field: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(sdk, **extra)
    assert caught.value.body["param"] == field
    assert caught.value.body["message"].startswith(f"{field}: ")


def test_grpc_constraints(glm_server: ServerThread) -> None:
    schema = SCHEMAS["nested"]
    with glm_server.client() as client:
        for seed in SEEDS:
            output = types_pb2.OutputOptions(json_schema=json.dumps(schema))
            reply = client.generate(chat=CHAT, max_new_tokens=200, temperature=1.0, seed=seed, output=output)
            jsonschema.validate(json.loads(reply.sequences[0].text), schema)
            output = types_pb2.OutputOptions(choice=types_pb2.Choice(options=["up", "down"]))
            reply = client.generate("Go", max_new_tokens=20, temperature=1.0, seed=seed, output=output)
            assert reply.sequences[0].text in ("up", "down")
        output = types_pb2.OutputOptions(regex="[0-9]{3}")
        greedy = client.generate("Go", max_new_tokens=20, temperature=0.0, output=output).sequences[0].text
        streamed = "".join(m.text for m in client.stream("Go", max_new_tokens=20, temperature=0.0, output=output))
        assert re.fullmatch("[0-9]{3}", greedy) and streamed == greedy
        with pytest.raises(AutoglmError) as caught:
            client.generate("Go", max_new_tokens=4, output=types_pb2.OutputOptions(regex="[0-9"))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "output.regex" in str(caught.value)
