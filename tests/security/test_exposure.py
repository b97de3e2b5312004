"""What leaks: no stack trace or prompt text reaches a client or the log by default; reflection can be off."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from autoglm_rpc.client import AutoglmError, Client
from tests.security.conftest import gateway_only
from tests.support import ServerThread, server_settings

SECRET = "SECRET-PROMPT-7f3a"


def test_an_unexpected_failure_shows_neither_prompt_nor_stack_trace(
    glm_server: ServerThread, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert glm_server.app is not None
    tokenizer = glm_server.app.frontend.model.tokenizer

    def explode(text: str, add_special_tokens: bool = True) -> list[int]:
        raise RuntimeError(f"the tokenizer broke on {text!r}")

    monkeypatch.setattr(tokenizer, "encode", explode)  # an unexpected bug in a dependency of the front end
    with caplog.at_level(logging.INFO), glm_server.client() as client:
        for call in (lambda: client.generate(SECRET), lambda: list(client.stream(SECRET)),
                     lambda: client.tokenize(SECRET)):  # fmt: skip
            with pytest.raises(AutoglmError) as caught:
                call()
            error = caught.value
            assert (error.code, error.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR")
            assert SECRET not in error.message and "Traceback" not in error.message
            assert "RuntimeError" not in error.message and "the server log has the details" in error.message
    monkeypatch.undo()
    logged = caplog.text
    assert "unexpected RuntimeError in Generate at" in logged
    assert "unexpected RuntimeError in Tokenize at" in logged
    assert SECRET not in logged and "Traceback" not in logged
    with glm_server.client() as client:
        assert client.generate("Hello", max_new_tokens=2).usage.completion_tokens == 2


def test_reflection_can_be_turned_off(glm_checkpoint: Path) -> None:
    settings = server_settings(glm_checkpoint, model_id="tiny-glm", reflection=False)
    with gateway_only(settings) as app, grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert Client(channel=channel).server_info(timeout=10).reflection_enabled is False
