"""API keys: calls need a known key (health excepted), a key's owner alone may cancel its requests, and each key
has its own rate limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from autoglm.v1 import generation_pb2, types_pb2
from autoglm_rpc.client import AutoglmError, Client
from tests.security.conftest import gateway_only, write_keys
from tests.support import ServerThread, server_settings

ALICE, BOB, CAROL = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef", "carol-key-0123456789abcdef"
KEYS = {ALICE: "alice", BOB: "bob", CAROL: "carol"}


@pytest.fixture(scope="module")
def keyed_server(glm_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One worker, API keys, and a tokens-per-minute limit of 600 per key (the context is 512 tokens)."""
    keys = write_keys(tmp_path_factory.mktemp("keys") / "keys", KEYS)
    settings = server_settings(glm_checkpoint, model_id="tiny-glm", workers=1, api_keys_file=str(keys),
                               rate_limit_tokens_per_minute=600)  # fmt: skip
    server = ServerThread(settings).start()
    yield server
    server.stop()


def _code(call) -> AutoglmError:
    with pytest.raises(AutoglmError) as caught:
        call()
    return caught.value


def test_calls_without_a_known_key_are_unauthenticated(keyed_server: ServerThread) -> None:
    target = keyed_server.target
    for api_key in (None, "wrong-key-0123456789abcdef"):
        with Client(target, api_key=api_key) as client:
            for call in (lambda: client.generate("hi", max_new_tokens=2), client.list_models,
                         lambda: client.tokenize("hi"), lambda: client.cancel("x")):  # fmt: skip
                error = _code(call)
                assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "")
                assert ALICE not in error.message
            messages = []
            with pytest.raises(AutoglmError) as caught:
                messages.extend(client.stream("hi", max_new_tokens=2))
            assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED and messages == []
    with Client(target, api_key=ALICE) as client:
        assert client.generate("hi", max_new_tokens=2).usage.completion_tokens == 2


def test_health_is_open_and_reflection_needs_a_key(keyed_server: ServerThread) -> None:
    with keyed_server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="autoglm.v1.GenerationService")
        assert health.Check(request, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as caught:
            list(reflection.ServerReflectionInfo(iter([listing]), timeout=10))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = reflection.ServerReflectionInfo(
            iter([listing]), timeout=10, metadata=(("authorization", f"Bearer {BOB}"),)
        )
        names = {s.name for answer in answers for s in answer.list_services_response.service}
        assert "autoglm.v1.GenerationService" in names


def test_request_ids_are_scoped_to_their_owner(keyed_server: ServerThread) -> None:
    """Another key can neither probe an id (its cancel finds nothing) nor squat it (it may use the same id)."""
    target = keyed_server.target
    long = {"max_new_tokens": 400, "stopping": {"ignore_eos": True}}
    with Client(target, api_key=ALICE) as alice, Client(target, api_key=BOB) as bob:
        stream = alice.stream("Hello", request_id="alice-1", **long)
        assert next(stream).request_id == "alice-1"
        error = _code(lambda: alice.generate("Hello", request_id="alice-1", max_new_tokens=2))
        assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "DUPLICATE_REQUEST_ID")
        assert "'alice-1'" in error.message and "alice/" not in error.message  # the owner's own id, unscoped
        outcomes = [r.outcome for r in bob.cancel("unrelated", "alice-1").results]
        assert outcomes == [generation_pb2.CANCEL_OUTCOME_NOT_FOUND] * 2
        assert bob.generate("Hello", request_id="alice-1", max_new_tokens=2).request_id == "alice-1"
        assert bob.cancel("alice-1").results[0].outcome == generation_pb2.CANCEL_OUTCOME_ALREADY_FINISHED
        outcome = alice.cancel("alice-1").results[0].outcome
        assert outcome == generation_pb2.CANCEL_OUTCOME_CANCELLED
        *_, last = stream
        assert last.finish_reason == types_pb2.FINISH_REASON_CANCELLED


def test_tokens_per_minute_are_limited_per_key(keyed_server: ServerThread) -> None:
    """Prompt plus max_new_tokens is reserved at admission: 500 + 4 fits 600 once a minute, not twice."""
    big = {"token_ids": [5] * 500, "max_new_tokens": 4, "stopping": {"ignore_eos": True}}
    with Client(keyed_server.target, api_key=CAROL) as carol, Client(keyed_server.target, api_key=BOB) as bob:
        assert carol.generate(**big).usage.total_tokens == 504
        error = _code(lambda: carol.generate(**big))
        assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert error.retry_after is not None and 10 < error.retry_after <= 60
        assert bob.generate(**big).usage.total_tokens == 504  # another key, another budget


def test_requests_per_minute_without_keys_share_one_anonymous_budget(glm_checkpoint: Path) -> None:
    settings = server_settings(glm_checkpoint, model_id="tiny-glm", rate_limit_requests_per_minute=2)
    with gateway_only(settings) as app, Client(f"127.0.0.1:{app.port}") as client:
        assert client.tokenize("hello").token_count > 0
        assert client.tokenize("hello").token_count > 0
        error = _code(lambda: client.tokenize("hello"))
        assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert error.retry_after is not None and 0 < error.retry_after <= 30
        assert "anonymous" in error.message
        assert client.server_info().default_model == "tiny-glm"  # ModelService is not counted
