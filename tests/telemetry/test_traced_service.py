"""One trace from the RPC to the kernels, across real processes: the gateway (in this process) and a real worker
process export OTLP/gRPC to a receiver in the test, and the spans are checked as they arrived there. Also: the RPC
span's status for OK, INVALID_ARGUMENT, a client's cancel and a worker crash; the metrics endpoint after traffic;
the access log; the same for the OpenAI-compatible HTTP API (its server span continues `traceparent`)."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoglm.v1 import generation_pb2, generation_pb2_grpc, types_pb2
from autoglm_rpc.telemetry.logs import JsonFormatter
from tests.support import ServerThread, server_settings
from tests.telemetry.otlp_receiver import OtlpReceiver, ReceivedSpan
from workers.model.checkpoints import DEMO_SPEC, build_checkpoint

STREAM_METHOD = "/autoglm.v1.GenerationService/GenerateStream"
GENERATE_METHOD = "/autoglm.v1.GenerationService/Generate"


@dataclass
class Traced:
    server: ServerThread
    receiver: OtlpReceiver
    access_log: io.StringIO

    def stub(self, channel: grpc.Channel) -> generation_pb2_grpc.GenerationServiceStub:
        return generation_pb2_grpc.GenerationServiceStub(channel)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The demo's size: slow enough on a CPU that a long request is still running when it is cancelled or killed.
    return build_checkpoint(tmp_path_factory.mktemp("traced"), replace(DEMO_SPEC, seed=6))


@pytest.fixture(scope="module")
def traced(checkpoint: Path) -> Iterator[Traced]:
    receiver = OtlpReceiver().start()
    access_log = io.StringIO()
    handler = logging.StreamHandler(access_log)
    handler.setFormatter(JsonFormatter())
    access_logger = logging.getLogger("autoglm_rpc.access")
    previous_level = access_logger.level
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    settings = server_settings(
        checkpoint,
        workers=1,
        otlp_endpoint=receiver.endpoint,
        trace_sample_ratio=1.0,
        trace_step_sample_ratio=1.0,
        kernel_capture="request",
        kernel_capture_interval=0.0,
        kernel_capture_top_k=3,
        metrics_port=0,
    )
    with pytest.MonkeyPatch.context() as env:
        # Export within 100 ms in every process (the worker inherits this environment when it is spawned).
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        env.delenv("OTEL_SDK_DISABLED", raising=False)
        env.delenv("OTEL_SERVICE_NAME", raising=False)
        server = ServerThread(settings).start()
    try:
        yield Traced(server, receiver, access_log)
    finally:
        server.stop()
        receiver.stop()
        access_logger.removeHandler(handler)
        access_logger.setLevel(previous_level)


def _traceparent() -> tuple[str, str, tuple[tuple[str, str], ...]]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent_id, (("traceparent", f"00-{trace_id}-{parent_id}-01"),)


def _stream_request(max_new_tokens: int, **fields: object) -> generation_pb2.GenerateStreamRequest:
    return generation_pb2.GenerateStreamRequest(
        prompt="Hello there",
        stopping=types_pb2.StopOptions(max_new_tokens=max_new_tokens, ignore_eos=True),
        **fields,
    )


def _by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.span_id: span for span in spans}


def _is_descendant(span: ReceivedSpan, ancestor: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> bool:
    current: ReceivedSpan | None = span
    while current is not None and current.parent_span_id:
        if current.parent_span_id == ancestor.span_id:
            return True
        current = by_id.get(current.parent_span_id)
    return False


def _one(spans: list[ReceivedSpan], **where: object) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, key) == value for key, value in where.items())]
    assert len(found) == 1, f"expected one span with {where}, found {len(found)}"
    return found[0]


def _rpc_span(traced: Traced, trace_id: str, method: str) -> ReceivedSpan:
    def arrived(spans: list[ReceivedSpan]) -> bool:
        return any(s.trace_id == trace_id and s.kind == "SPAN_KIND_SERVER" for s in spans)

    spans = traced.receiver.wait_for(arrived)
    return _one(spans, trace_id=trace_id, name=method)


def test_one_stream_is_one_trace_from_the_rpc_to_the_kernels(traced: Traced) -> None:
    trace_id, caller_span_id, metadata = _traceparent()
    with traced.server.channel() as channel:
        call = traced.stub(channel).GenerateStream(
            _stream_request(6), metadata=(*metadata, ("x-autoglm-profile", "kernels")), timeout=60
        )
        chunks = list(call)
    assert chunks[-1].usage.completion_tokens == 6
    request_id = chunks[0].request_id

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {s.name for s in spans if s.trace_id == trace_id}
        return {STREAM_METHOD, "decode"} <= names and any(s.name == "kernels" for s in spans)

    spans = traced.receiver.wait_for(complete)
    by_id = _by_id(spans)
    in_trace = [s for s in spans if s.trace_id == trace_id]

    rpc = _one(in_trace, name=STREAM_METHOD)
    assert (rpc.kind, rpc.parent_span_id, rpc.service) == (
        "SPAN_KIND_SERVER",
        caller_span_id,
        "autoglm-rpc-gateway",
    )
    assert rpc.attributes["rpc.grpc.status_code"] == 0 and rpc.status == "STATUS_CODE_UNSET"
    assert rpc.attributes["rpc.system"] == "grpc" and rpc.attributes["rpc.method"] == "GenerateStream"

    generate = _one(in_trace, name=f"generate {traced.server.app.frontend.model.model_id}")
    assert generate.parent_span_id == rpc.span_id
    assert generate.attributes["gen_ai.usage.output_tokens"] == 6
    assert generate.attributes["gen_ai.response.id"] == request_id
    assert "first_token" in generate.events
    assert _one(in_trace, name="route").parent_span_id == generate.span_id
    pipe_send = _one(in_trace, name="pipe.send worker-0")
    assert (pipe_send.parent_span_id, pipe_send.kind) == (generate.span_id, "SPAN_KIND_PRODUCER")

    request = _one(in_trace, name="request")
    assert (request.service, request.kind) == ("autoglm-rpc-worker", "SPAN_KIND_CONSUMER")
    assert _is_descendant(request, rpc, by_id)
    assert request.attributes["autoglm.request_id"] == request_id
    assert {key: request.resource.get(key) for key in ("autoglm.worker.id", "autoglm.rank")} == {
        "autoglm.worker.id": 0,
        "autoglm.rank": 0,
    }
    assert request.resource.get("autoglm.tensor_parallel_size") == 1
    for phase in ("queue", "prefill", "decode"):
        child = _one(in_trace, name=phase)
        assert child.parent_span_id == request.span_id and request.contains(child)
    assert _one(in_trace, name="decode").attributes["gen_ai.usage.output_tokens"] == 6

    # Steps are their own traces, linked both ways with the request they served.
    steps = [s for s in spans if s.name == "engine.step" and (trace_id, request.span_id) in s.links]
    assert steps, "no engine.step links to the request span"
    assert {(s.trace_id, s.span_id) for s in steps} <= set(request.links)
    for step in steps:
        phases = [
            s for s in spans if s.parent_span_id == step.span_id and s.name in ("schedule", "forward", "emit")
        ]
        assert len(phases) == 3 and all(step.contains(p) for p in phases)

    # Kernel capture, asked for by the request: one profiled step, with operator spans inside it.
    kernels = [s for s in spans if s.name == "kernels" and by_id[s.parent_span_id] in steps]
    assert len(kernels) == 1
    summary = kernels[0]
    step = by_id[summary.parent_span_id]
    assert summary.attributes["autoglm.kernels.device"] == "cpu"
    assert summary.attributes["autoglm.kernels.count"] > 0
    assert summary.attributes["autoglm.kernels.busy_time_ms"] > 0
    assert summary.attributes["autoglm.kernels.top"]
    assert step.contains(summary)
    entries = [s for s in spans if s.parent_span_id == summary.span_id]
    assert len(entries) == 3
    assert all(entry.name.startswith("aten::") and step.contains(entry) for entry in entries)


def test_the_access_log_is_json_with_ids_and_no_prompt_text(traced: Traced) -> None:
    trace_id, _, metadata = _traceparent()
    with traced.server.channel() as channel:
        response = traced.stub(channel).Generate(
            generation_pb2.GenerateRequest(
                prompt="secret words", stopping=types_pb2.StopOptions(max_new_tokens=3)
            ),
            metadata=metadata,
            timeout=60,
        )
    lines = [json.loads(line) for line in traced.access_log.getvalue().splitlines()]
    (line,) = [entry for entry in lines if entry.get("request_id") == response.request_id]
    assert (line["method"], line["code"], line["trace_id"]) == (GENERATE_METHOD, "OK", trace_id)
    assert line["prompt_tokens"] == response.usage.prompt_tokens
    assert line["completion_tokens"] == response.usage.completion_tokens
    assert line["duration_ms"] > 0 and len(line["span_id"]) == 16
    assert "secret" not in json.dumps(line)


def test_rpc_span_of_a_bad_request_is_invalid_argument_and_not_an_error(traced: Traced) -> None:
    trace_id, _, metadata = _traceparent()
    bad = generation_pb2.GenerateRequest(prompt="Hi", sampling=types_pb2.SamplingOptions(top_p=1.5))
    with traced.server.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        traced.stub(channel).Generate(bad, metadata=metadata, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    rpc = _rpc_span(traced, trace_id, GENERATE_METHOD)
    assert rpc.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert rpc.status == "STATUS_CODE_UNSET"  # the caller's mistake, not the server's (gRPC conventions)


def test_rpc_span_of_a_cancelled_stream_says_cancelled(traced: Traced) -> None:
    trace_id, _, metadata = _traceparent()
    with traced.server.channel() as channel:
        call = traced.stub(channel).GenerateStream(_stream_request(4000), metadata=metadata, timeout=60)
        next(call)  # admitted
        call.cancel()
    rpc = _rpc_span(traced, trace_id, STREAM_METHOD)
    assert rpc.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert "cancelled" in rpc.events and rpc.status == "STATUS_CODE_UNSET"
    spans = traced.receiver.wait_for(
        lambda spans: any(s.trace_id == trace_id and s.name == "request" for s in spans)
    )
    request = _one([s for s in spans if s.trace_id == trace_id], name="request")
    assert request.attributes["gen_ai.response.finish_reasons"] == ["cancelled"]


def _scrape(port: int, openmetrics: bool = False) -> str:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def test_metrics_after_traffic(traced: Traced) -> None:
    with traced.server.channel() as channel:
        traced.stub(channel).Generate(
            generation_pb2.GenerateRequest(prompt="Hello", stopping=types_pb2.StopOptions(max_new_tokens=5)),
            timeout=60,
        )
    port = traced.server.app.telemetry.metrics_port
    assert port
    families = {family.name: family for family in text_string_to_metric_families(_scrape(port))}
    model = traced.server.app.frontend.model.model_id

    duration = families["gen_ai_server_request_duration_seconds"]
    assert duration.type == "histogram"
    buckets = [s for s in duration.samples if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in buckets][:3] == ["0.01", "0.02", "0.04"] and buckets[-1].labels["le"] == "+Inf"
    assert {s.labels["model"] for s in duration.samples} == {model}
    ttft = families["gen_ai_server_time_to_first_token_seconds"]
    assert [s.labels["le"] for s in ttft.samples if s.name.endswith("_bucket")][:2] == ["0.001", "0.005"]
    count = next(s.value for s in ttft.samples if s.name.endswith("_count"))
    assert count >= 1
    assert families["gen_ai_server_time_per_output_token_seconds"].type == "histogram"

    requests = families["autoglm_requests"]  # the parser drops the counter's _total suffix from the family
    ok = [s for s in requests.samples if s.labels == {"model": model, "protocol": "grpc", "code": "OK"}]
    assert ok and ok[0].value >= 1
    assert {s.labels["code"] for s in requests.samples} >= {"OK", "INVALID_ARGUMENT"}
    assert next(s.value for s in families["autoglm_output_tokens"].samples) >= 5
    assert next(s.value for s in families["autoglm_prompt_tokens"].samples) >= 1

    for gauge in (
        "autoglm_worker_up",
        "autoglm_running_requests",
        "autoglm_queue_depth",
        "autoglm_kv_cache_usage_ratio",
        "autoglm_kv_cache_blocks_used",
        "autoglm_kv_cache_blocks_free",
        "autoglm_prefix_cache_prompt_tokens",
        "autoglm_prefix_cache_hit_tokens",
        "autoglm_prefix_cache_hit_ratio",
        "autoglm_kv_cache_preemptions",
    ):
        (sample,) = families[gauge].samples
        assert sample.labels == {"model": model, "worker": "0"}
    assert families["autoglm_worker_up"].samples[0].value == 1
    assert 0 <= families["autoglm_kv_cache_usage_ratio"].samples[0].value <= 1
    assert families["autoglm_worker_restarts"].samples[0].value == 0
    assert families["autoglm_kv_cache_blocks_free"].samples[0].value > 0
    assert families["autoglm_prefix_cache_prompt_tokens"].samples[0].value >= 1  # the prompt "Hello" at least

    openmetrics = _scrape(port, openmetrics=True)
    assert "# UNIT gen_ai_server_request_duration_seconds seconds" in openmetrics
    assert "# UNIT autoglm_output_tokens tokens" in openmetrics
    assert "# UNIT autoglm_kv_cache_usage_ratio ratio" in openmetrics


def _http(traced: Traced) -> str:
    return f"http://127.0.0.1:{traced.server.app.http.port}/v1"


def test_an_http_completion_is_one_trace_with_metrics_and_an_access_log_line(traced: Traced) -> None:
    trace_id, caller_span_id, metadata = _traceparent()
    body = {"prompt": "secret words", "max_tokens": 4, "ignore_eos": True}
    reply = httpx.post(f"{_http(traced)}/completions", json=body, headers=dict(metadata), timeout=60).json()
    request_id = reply["id"].removeprefix("cmpl-")

    spans = traced.receiver.wait_for(
        lambda spans: any(s.trace_id == trace_id and s.name == "request" for s in spans)
    )
    in_trace = [s for s in spans if s.trace_id == trace_id]
    server = _one(in_trace, name="POST /v1/completions")
    assert (server.kind, server.parent_span_id) == ("SPAN_KIND_SERVER", caller_span_id)
    assert server.attributes["http.response.status_code"] == 200 and server.status == "STATUS_CODE_UNSET"
    assert server.attributes["http.route"] == "/v1/completions"
    generate = _one(in_trace, name=f"generate {traced.server.app.frontend.model.model_id}")
    assert generate.parent_span_id == server.span_id
    assert generate.attributes["gen_ai.response.id"] == request_id
    assert _is_descendant(_one(in_trace, name="request"), server, _by_id(spans))

    families = {family.name: family for family in text_string_to_metric_families(
        _scrape(traced.server.app.telemetry.metrics_port or 0))}  # fmt: skip
    http_ok = [s for s in families["autoglm_requests"].samples if s.labels.get("protocol") == "http"]
    assert [s.labels["code"] for s in http_ok] == ["200"] and http_ok[0].value >= 1

    lines = [json.loads(line) for line in traced.access_log.getvalue().splitlines()]
    (line,) = [entry for entry in lines if entry.get("request_id") == request_id]
    assert (line["method"], line["code"], line["protocol"]) == ("POST /v1/completions", "200", "http")
    assert line["trace_id"] == trace_id and line["completion_tokens"] == 4
    assert "secret" not in json.dumps(line)


def test_an_http_client_that_disconnects_stops_its_request_in_the_worker(traced: Traced) -> None:
    trace_id, _, metadata = _traceparent()
    body = {"prompt": "Hello there", "max_tokens": 4000, "ignore_eos": True, "stream": True}
    url = f"{_http(traced)}/completions"
    with httpx.stream("POST", url, json=body, headers=dict(metadata), timeout=60) as reply:
        next(reply.iter_lines())  # the first chunk: the request is running
    # Not streamed: the client stops waiting for the whole answer.
    whole_trace_id, _, whole_metadata = _traceparent()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json={**body, "stream": False}, headers=dict(whole_metadata),
                   timeout=httpx.Timeout(60, read=1.0))  # fmt: skip
    for trace in (trace_id, whole_trace_id):
        spans = traced.receiver.wait_for(
            lambda spans, trace=trace: any(s.trace_id == trace and s.name == "request" for s in spans)
        )
        in_trace = [s for s in spans if s.trace_id == trace]
        assert _one(in_trace, name="request").attributes["gen_ai.response.finish_reasons"] == ["cancelled"]
        server = _one(in_trace, name="POST /v1/completions")
        assert server.attributes["http.response.status_code"] == 499 and "cancelled" in server.events


def test_rpc_span_of_a_worker_crash_is_unavailable_and_an_error(traced: Traced) -> None:
    """Last in this module: it kills the module server's only worker."""
    trace_id, _, metadata = _traceparent()
    (worker,) = traced.server.app.pool.workers
    with traced.server.channel() as channel:
        call = traced.stub(channel).GenerateStream(_stream_request(4000), metadata=metadata, timeout=60)
        next(call)
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    rpc = _rpc_span(traced, trace_id, STREAM_METHOD)
    assert rpc.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert rpc.status == "STATUS_CODE_ERROR"
    generate = _one([s for s in traced.receiver.snapshot() if s.trace_id == trace_id], parent_span_id=rpc.span_id)
    assert generate.attributes["error.type"] == "WORKER_CRASHED"
