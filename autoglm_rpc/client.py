"""Python clients for autoglm-rpc, over the generated stubs: `Client` (blocking) and `AsyncClient` (asyncio).

    with Client("127.0.0.1:50051") as client:
        print(client.generate("Hello", max_new_tokens=32).sequences[0].text)
        for chunk in client.stream("Hello", max_new_tokens=32):
            print(chunk.text, end="", flush=True)

Failures raise `AutoglmError`, which carries the gRPC status code, the contract's reason (such as
"PROMPT_TOO_LONG" or "QUEUE_FULL") and, where the server suggests one, how long to wait before retrying.

Security: `api_key` is sent as `authorization: Bearer <key>` with every call; `tls=True` (implied by any of
`root_certificates`, `certificate_chain`, `private_key`: PEM bytes or a file path) opens a TLS channel, verified
against the system's roots or `root_certificates`, presenting a client certificate for mutual TLS.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autoglm.v1 import generation_pb2, generation_pb2_grpc, model_pb2, model_pb2_grpc, types_pb2

READINESS_SERVICE = "autoglm.v1.GenerationService"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class AutoglmError(Exception):
    """A call failed. `code` is the gRPC status code, `reason` the contract's ErrorInfo reason ("" if none)."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", retry_after: float | None = None):
        super().__init__(f"{code.name} {reason or ''}: {message}".replace("  ", " "))
        self.code = code
        self.message = message
        self.reason = reason
        self.retry_after = retry_after


def error_from_rpc(error: grpc.RpcError) -> AutoglmError:
    """Decode a failed call's status, including the google.rpc.Status details the server attaches."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    reason, retry_after = "", None
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key != _STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    return AutoglmError(code, message or "", reason, retry_after)


def build_request(
    message_class: type,
    prompt: str | None = None,
    *,
    chat: Sequence[tuple[str, str] | dict[str, str]] | None = None,
    token_ids: Sequence[int] | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    request_id: str = "",
    model: str = "",
    return_token_ids: bool = False,
    **fields: Any,
) -> Any:
    """A GenerateRequest / GenerateStreamRequest from keyword arguments; `fields` sets any other field."""
    request = message_class(request_id=request_id, model=model, **fields)
    if prompt is not None:
        request.prompt = prompt
    elif chat is not None:
        request.chat.SetInParent()  # an empty conversation is still a chat input (and an invalid one)
        for item in chat:
            role, content = (item["role"], item["content"]) if isinstance(item, dict) else item
            request.chat.messages.add(role=role, content=content)
    elif token_ids is not None:
        request.prompt_token_ids.SetInParent()
        request.prompt_token_ids.ids.extend(token_ids)
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    sampling |= {"repetition_penalty": repetition_penalty, "seed": seed}
    sampling |= {"frequency_penalty": frequency_penalty, "presence_penalty": presence_penalty}
    for name, value in sampling.items():
        if value is not None:
            setattr(request.sampling, name, value)
    if max_new_tokens is not None:
        request.stopping.max_new_tokens = max_new_tokens
    request.stopping.stop_sequences.extend(stop)
    request.output.return_token_ids = return_token_ids or request.output.return_token_ids
    return request


Pem = bytes | str | Path


def _pem(value: Pem | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def channel_credentials(
    root_certificates: Pem | None = None, certificate_chain: Pem | None = None, private_key: Pem | None = None
) -> grpc.ChannelCredentials:
    """TLS: trust `root_certificates` (default: the system's roots); present a client certificate if given."""
    return grpc.ssl_channel_credentials(_pem(root_certificates), _pem(private_key), _pem(certificate_chain))


def _open_channel(transport: Any, target: str, tls: bool, *pems: Pem | None) -> Any:
    """A channel from `transport` (`grpc` or `grpc.aio`): TLS when asked for or when any PEM is given.

    pems: root certificates, certificate chain, private key (see `channel_credentials`).
    """
    if tls or any(pem is not None for pem in pems):
        return transport.secure_channel(target, channel_credentials(*pems))
    return transport.insecure_channel(target)


def _auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {api_key}"),) if api_key else None


class Client:
    """A blocking client. Every call accepts `timeout` (seconds) and raises AutoglmError on failure."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        channel: grpc.Channel | None = None,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: Pem | None = None,
        certificate_chain: Pem | None = None,
        private_key: Pem | None = None,
    ) -> None:
        self._channel = channel or _open_channel(
            grpc, target, tls, root_certificates, certificate_chain, private_key
        )
        self._metadata = _auth_metadata(api_key)
        self._generation = generation_pb2_grpc.GenerationServiceStub(self._channel)
        self._models = model_pb2_grpc.ModelServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def generate(self, prompt: str | None = None, *, timeout: float | None = None, **options: Any):
        request = build_request(generation_pb2.GenerateRequest, prompt, **options)
        return _call(self._generation.Generate, request, timeout, self._metadata)

    def stream(
        self, prompt: str | None = None, *, timeout: float | None = None, **options: Any
    ) -> Iterator[generation_pb2.GenerateStreamResponse]:
        """Yield the stream's messages; closing the iterator early cancels the call (and the work)."""
        request = build_request(generation_pb2.GenerateStreamRequest, prompt, **options)
        call = self._generation.GenerateStream(request, timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        finally:
            call.cancel()

    def cancel(self, *request_ids: str, timeout: float | None = None) -> generation_pb2.CancelGenerationResponse:
        request = generation_pb2.CancelGenerationRequest(request_ids=request_ids)
        return _call(self._generation.CancelGeneration, request, timeout, self._metadata)

    def tokenize(self, text: str, *, timeout: float | None = None) -> generation_pb2.TokenizeResponse:
        request = generation_pb2.TokenizeRequest(text=text)
        return _call(self._generation.Tokenize, request, timeout, self._metadata)

    def list_models(self, *, timeout: float | None = None) -> model_pb2.ListModelsResponse:
        return _call(self._models.ListModels, model_pb2.ListModelsRequest(), timeout, self._metadata)

    def server_info(self, *, timeout: float | None = None) -> model_pb2.GetServerInfoResponse:
        return _call(self._models.GetServerInfo, model_pb2.GetServerInfoRequest(), timeout, self._metadata)

    def wait_until_ready(self, timeout: float = 600.0) -> None:
        """Block until readiness is SERVING (the model is loaded); raise AutoglmError at `timeout`."""
        deadline = time.monotonic() + timeout
        request = health_pb2.HealthCheckRequest(service=READINESS_SERVICE)
        try:
            for response in self._health.Watch(request, timeout=timeout, wait_for_ready=True):
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        remaining = max(0.0, deadline - time.monotonic())
        raise AutoglmError(grpc.StatusCode.UNAVAILABLE, f"not ready ({remaining:.0f}s left of the timeout)")


def _call(method: Any, request: Any, timeout: float | None, metadata: Any = None) -> Any:
    try:
        return method(request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as error:
        raise error_from_rpc(error) from None


class AsyncClient:
    """The asyncio twin of `Client`, on a grpc.aio channel."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        channel: grpc.aio.Channel | None = None,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: Pem | None = None,
        certificate_chain: Pem | None = None,
        private_key: Pem | None = None,
    ) -> None:
        self._channel = channel or _open_channel(
            grpc.aio, target, tls, root_certificates, certificate_chain, private_key
        )
        self._metadata = _auth_metadata(api_key)
        self._generation = generation_pb2_grpc.GenerationServiceStub(self._channel)
        self._models = model_pb2_grpc.ModelServiceStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def generate(self, prompt: str | None = None, *, timeout: float | None = None, **options: Any):
        request = build_request(generation_pb2.GenerateRequest, prompt, **options)
        return await _acall(self._generation.Generate, request, timeout, self._metadata)

    async def stream(
        self, prompt: str | None = None, *, timeout: float | None = None, **options: Any
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        """Yield the stream's messages; leaving the loop early cancels the call (and the work)."""
        request = build_request(generation_pb2.GenerateStreamRequest, prompt, **options)
        call = self._generation.GenerateStream(request, timeout=timeout, metadata=self._metadata)
        try:
            async for message in call:
                yield message
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        finally:
            call.cancel()

    async def cancel(self, *request_ids: str, timeout: float | None = None):
        request = generation_pb2.CancelGenerationRequest(request_ids=request_ids)
        return await _acall(self._generation.CancelGeneration, request, timeout, self._metadata)

    async def tokenize(self, text: str, *, timeout: float | None = None) -> generation_pb2.TokenizeResponse:
        request = generation_pb2.TokenizeRequest(text=text)
        return await _acall(self._generation.Tokenize, request, timeout, self._metadata)

    async def list_models(self, *, timeout: float | None = None) -> model_pb2.ListModelsResponse:
        return await _acall(self._models.ListModels, model_pb2.ListModelsRequest(), timeout, self._metadata)

    async def server_info(self, *, timeout: float | None = None) -> model_pb2.GetServerInfoResponse:
        request = model_pb2.GetServerInfoRequest()
        return await _acall(self._models.GetServerInfo, request, timeout, self._metadata)


async def _acall(method: Any, request: Any, timeout: float | None, metadata: Any = None) -> Any:
    try:
        return await method(request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as error:
        raise error_from_rpc(error) from None


FINISH_REASON_NAMES = {
    value: name.removeprefix("FINISH_REASON_").lower() for name, value in types_pb2.FinishReason.items()
}
