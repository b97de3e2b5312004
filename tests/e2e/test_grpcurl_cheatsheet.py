"""The grpcurl cheat sheet of docs/grpc-api.md, and the README's first grpcurl call, cannot rot: everything they
name is found through server reflection alone, every JSON body parses into its method's request message, and every
plaintext call they show succeeds against a live server (with the reflected descriptors, as grpcurl would do it;
grpcurl itself is not packaged here)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.doc_blocks import block, shell_commands
from tests.support import ServerThread

SHEET_TARGET = "localhost:50051"


@dataclass
class Command:
    """One grpcurl invocation from the sheet."""

    line: str
    flags: dict[str, list[str]] = field(default_factory=dict)
    target: str = ""
    verb: str = ""  # "list", "describe" or a method "pkg.Service/Method"
    symbol: str = ""  # what list/describe names


def sheet_text() -> str:
    return block("docs/grpc-api.md", "grpcurl-cheatsheet", "sh")


def cheat_sheet(text: str) -> list[Command]:
    return [_parse(line) for line in shell_commands(text, "grpcurl")]


def _parse(line: str) -> Command:
    words = shlex.split(line, comments=True)[1:]
    command = Command(line)
    positional: list[str] = []
    while words:
        word = words.pop(0)
        if word in ("-plaintext", "-insecure", "-v"):
            command.flags.setdefault(word, [])
        elif word.startswith("-"):
            command.flags.setdefault(word, []).append(words.pop(0))
        else:
            positional.append(word)
    command.target, command.verb, *rest = positional
    command.symbol = rest[0] if rest else ""
    return command


SHEET = cheat_sheet(sheet_text())
COMMANDS = SHEET + cheat_sheet(block("README.md", "quickstart-grpcurl", "sh"))


@pytest.fixture(scope="module")
def reflected(glm_server: ServerThread) -> Iterator[tuple[grpc.Channel, ProtoReflectionDescriptorDatabase]]:
    with glm_server.channel() as channel:
        yield channel, ProtoReflectionDescriptorDatabase(channel)


def test_the_sheet_covers_every_rpc_of_the_contract() -> None:
    methods = {c.verb.split("/")[1] for c in SHEET if "/" in c.verb}
    expected = {"Generate", "GenerateStream", "CancelGeneration", "Tokenize", "ListModels", "GetServerInfo"}
    assert expected | {"Check"} <= methods
    assert {"list", "describe"} <= {c.verb for c in SHEET}
    assert len(COMMANDS) == len(SHEET) + 1  # the README's first request
    flags = {flag for c in SHEET for flag in c.flags}
    assert {"-plaintext", "-d", "-H", "-insecure", "-cacert", "-cert", "-key", "-max-time"} <= flags


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.verb} {c.symbol}".strip())
def test_each_command_works_through_reflection_alone(
    command: Command, reflected: tuple[grpc.Channel, ProtoReflectionDescriptorDatabase], glm_server: ServerThread
) -> None:
    channel, database = reflected
    pool = descriptor_pool.DescriptorPool(database)
    services = set(database.get_services())
    if command.verb == "list":
        if command.symbol:
            assert pool.FindServiceByName(command.symbol).methods
        else:
            assert {"autoglm.v1.GenerationService", "autoglm.v1.ModelService", "grpc.health.v1.Health"} <= services
            assert set(re.findall(r"^#   (\S+)$", sheet_text(), re.M)) == services  # the listing shown
        return
    if command.verb == "describe":
        try:
            assert pool.FindServiceByName(command.symbol).methods
        except KeyError:
            assert pool.FindMessageTypeByName(command.symbol).fields
        return
    service_name, method_name = command.verb.split("/")
    assert service_name in services
    method = pool.FindServiceByName(service_name).methods_by_name[method_name]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    (body,) = command.flags.get("-d", ["{}"])
    request = json_format.Parse(body, request_class())
    if "-plaintext" not in command.flags:
        assert command.target != SHEET_TARGET  # TLS examples name a remote host; parsing is what can be checked
        return
    assert command.target == SHEET_TARGET
    metadata = [tuple(part.strip() for part in header.split(":", 1)) for header in command.flags.get("-H", [])]
    path = f"/{service_name}/{method_name}"
    arguments = {
        "request_serializer": request_class.SerializeToString,
        "response_deserializer": response_class.FromString,
    }
    if method.server_streaming:
        call = channel.unary_stream(path, **arguments)
        responses = list(call(request, metadata=metadata, timeout=120))
        assert responses and responses[-1].finish_reason  # the last message carries the finish reason
    else:
        call = channel.unary_unary(path, **arguments)
        response = call(request, metadata=metadata, timeout=120)
        assert response.ByteSize() > 0 or method_name == "Check"
