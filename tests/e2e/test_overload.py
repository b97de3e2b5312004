"""Overload and a slow consumer, on one worker with a small capacity: past the capacity calls are refused with
RESOURCE_EXHAUSTED / QUEUE_FULL and a RetryInfo while the admitted ones finish; a stream nobody reads neither
blocks the other streams on its worker nor grows without bound, and loses nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import pytest

from autoglm.v1 import types_pb2
from autoglm_rpc.client import AutoglmError, Client
from tests.support import ServerThread, server_settings
from workers.model.checkpoints import DEMO_SPEC, build_checkpoint

MAX_BATCH, MAX_QUEUE, BUFFER = 4, 2, 8
CAPACITY = MAX_BATCH + MAX_QUEUE


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One worker, 4 batch slots and 2 queue places; the demo model's size (seconds for a thousand tokens)."""
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("overload"), replace(DEMO_SPEC, seed=5))
    settings = server_settings(
        checkpoint, workers=1, max_batch_size=MAX_BATCH, max_queue_depth=MAX_QUEUE, stream_buffer_messages=BUFFER
    )
    server = ServerThread(settings).start()
    yield server
    server.stop()


def _wait_until_idle(server: ServerThread, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while server.call(lambda: server.app.pool.num_in_flight) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.call(lambda: server.app.pool.num_in_flight) == 0, "a request never finished in the worker"


def test_flood_past_capacity_is_refused_with_retry_info(small_server: ServerThread) -> None:
    with small_server.client() as client:
        held = [
            client.stream("Hello", max_new_tokens=600, stopping={"ignore_eos": True}, timeout=120)
            for _ in range(CAPACITY)
        ]
        for stream in held:
            next(stream)  # admitted: running or queued in the worker; the server is now at capacity

        def call(index: int) -> AutoglmError | None:
            try:
                client.generate(f"flood {index}", max_new_tokens=5, timeout=30)
            except AutoglmError as error:
                return error
            return None

        with ThreadPoolExecutor(16) as executor:
            outcomes = list(executor.map(call, range(48)))
        assert all(o is not None for o in outcomes), "a call past the capacity was admitted"
        assert {(o.code, o.reason) for o in outcomes} == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL")}
        assert all(o.retry_after == 1.0 for o in outcomes)

        for stream in held:  # the admitted ones are unaffected
            last = list(stream)[-1]
            assert last.finish_reason == types_pb2.FINISH_REASON_MAX_NEW_TOKENS
            assert last.usage.completion_tokens == 600
        _wait_until_idle(small_server)
        assert client.generate("after the flood", max_new_tokens=3, timeout=30).usage.completion_tokens == 3


def test_unread_stream_blocks_no_one_and_loses_nothing(small_server: ServerThread) -> None:
    num_tokens = 1000
    merged_before = small_server.call(lambda: small_server.app.pool.num_merged)
    # A client that takes little before the application reads (no window growth by bandwidth probing), so an
    # unread stream soon pushes back on the server, as a stalled consumer across a network does.
    channel = grpc.insecure_channel(
        small_server.target, options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024)]
    )
    with Client(channel=channel) as client:
        options = {"return_token_ids": True, "output": {"return_logprobs": True, "top_logprobs": 5}}
        unread = client.stream("Hello", max_new_tokens=num_tokens, stopping={"ignore_eos": True}, **options)
        first = next(unread)  # admitted; from here on nobody reads this stream for a while

        # Other requests on the same worker, meanwhile, finish (a bound for a hang, not a speed check).
        with ThreadPoolExecutor(3) as executor:
            results = list(
                executor.map(lambda i: client.generate(f"other {i}", max_new_tokens=20, timeout=60), range(3))
            )
        assert all(r.usage.completion_tokens == 20 for r in results)
        # The unread request runs to its end in the worker; its stream's pending output stayed bounded by
        # merging rather than queueing a message per step.
        _wait_until_idle(small_server)
        merged = small_server.call(lambda: small_server.app.pool.num_merged) - merged_before
        assert merged > 0

        rest = list(unread)  # now read it: every token is there
        token_ids = [t for message in [first, *rest] for t in message.token_ids]
        last = rest[-1]
        assert last.usage.completion_tokens == len(token_ids) == num_tokens
        assert sum(len(message.logprobs) for message in rest) == num_tokens
        assert last.finish_reason == types_pb2.FINISH_REASON_MAX_NEW_TOKENS
