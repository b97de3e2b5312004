"""Health, reflection, ModelService and Tokenize against a running server."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support import ServerThread


def test_health_liveness_and_readiness(glm_server: ServerThread) -> None:
    with glm_server.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "autoglm.v1.GenerationService"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(glm_server: ServerThread) -> None:
    with glm_server.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {service.name for service in response.list_services_response.service}
    assert {"autoglm.v1.GenerationService", "autoglm.v1.ModelService", "grpc.health.v1.Health"} <= names


def test_reflection_describes_the_contract_with_its_dependencies(glm_server: ServerThread) -> None:
    """What `grpcurl describe` needs: the service's file and every file it imports, by symbol."""
    from google.protobuf import descriptor_pb2

    with glm_server.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="autoglm.v1.GenerationService")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in response.file_descriptor_response.file_descriptor_proto
    ]
    names = {f.name for f in files}
    assert {"autoglm/v1/generation.proto", "autoglm/v1/types.proto", "google/protobuf/duration.proto"} <= names
    generation = next(f for f in files if f.name == "autoglm/v1/generation.proto")
    methods = {m.name for m in generation.service[0].method}
    assert methods == {"Generate", "GenerateStream", "CancelGeneration", "Tokenize"}


def test_list_models_and_server_info(glm_server: ServerThread, glm_checkpoint: Path) -> None:
    with glm_server.client() as client:
        (model,) = client.list_models().models
        info = client.server_info()
    assert model.id == "tiny-glm"
    assert model.source == str(glm_checkpoint.resolve())
    assert model.architecture == "GlmForCausalLM"
    assert (model.dtype, model.quantization) == ("float32", "none")
    assert model.max_context_tokens == 512
    assert model.has_chat_template
    assert model.defaults.temperature == 0.0
    assert (model.ready_workers, model.total_workers) == (2, 2)
    assert (info.api_version, info.default_model) == ("autoglm.v1", "tiny-glm")
    assert (info.ready_workers, info.total_workers) == (2, 2)
    assert info.reflection_enabled


def test_tokenize_counts_like_generate(glm_server: ServerThread) -> None:
    with glm_server.client() as client:
        tokens = client.tokenize("Héllo wörld 你好 😀")
        result = client.generate("Héllo wörld 你好 😀", max_new_tokens=1)
    assert tokens.token_count == len(tokens.token_ids) == result.usage.prompt_tokens
    assert tokens.max_context_tokens == 512


def test_response_metadata_carries_the_request_id(glm_server: ServerThread) -> None:
    from autoglm.v1 import generation_pb2, generation_pb2_grpc

    with glm_server.channel() as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        request = generation_pb2.GenerateRequest(prompt="hi", request_id="abc-123")
        request.stopping.max_new_tokens = 2
        response, call = stub.Generate.with_call(request, timeout=30)
    assert response.request_id == "abc-123"
    assert ("x-request-id", "abc-123") in tuple(call.initial_metadata())
    assert call.code() == grpc.StatusCode.OK
