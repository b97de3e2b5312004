"""Cancelled and expired requests stop in the worker and free their slot for the next requests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest

from autoglm.v1 import generation_pb2, types_pb2
from autoglm_rpc.client import AutoglmError
from tests.support import ServerThread, server_settings
from workers.model.checkpoints import DEMO_SPEC, build_checkpoint

# Long enough (seconds of work even on a fast machine) that nothing here finishes before it is cancelled.
LONG = {"max_new_tokens": 4000, "stopping": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One worker with one batch slot and no queue: a second concurrent request is refused with QUEUE_FULL.

    The model is the demo's size (a few hundred tokens a second here), with a 4096-token context.
    """
    spec = replace(DEMO_SPEC, seed=3)
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("slow"), spec)
    settings = server_settings(checkpoint, workers=1, max_batch_size=1, max_queue_depth=0)
    server = ServerThread(settings).start()
    yield server
    server.stop()


def _in_flight(server: ServerThread) -> int:
    return server.call(lambda: server.app.pool.num_in_flight)


def _wait_until_idle(server: ServerThread, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _in_flight(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _in_flight(server) == 0, "the worker never reported the request finished"


def test_cancelled_stream_frees_its_slot(one_slot_server: ServerThread) -> None:
    with one_slot_server.client() as client:
        stream = client.stream("Hello", **LONG)
        next(stream)  # admitted: the only slot is taken
        with pytest.raises(AutoglmError) as caught:
            client.generate("Hello", max_new_tokens=2)
        assert caught.value.reason == "QUEUE_FULL"
        assert caught.value.retry_after is not None
        stream.close()  # the client cancels the call
        _wait_until_idle(one_slot_server)
        # The next request does not wait behind the cancelled one.
        assert client.generate("Hello", max_new_tokens=3, timeout=30).usage.completion_tokens > 0


def test_cancel_generation_ends_the_stream_normally(one_slot_server: ServerThread) -> None:
    with one_slot_server.client() as client:
        stream = client.stream("Hello", request_id="to-cancel", return_token_ids=True, **LONG)
        first = next(stream)
        assert first.request_id == "to-cancel"
        outcome = client.cancel("to-cancel", "never-seen").results
        assert [r.outcome for r in outcome] == [
            generation_pb2.CANCEL_OUTCOME_CANCELLED,
            generation_pb2.CANCEL_OUTCOME_NOT_FOUND,
        ]
        rest = list(stream)
        last = rest[-1]
        assert last.finish_reason == types_pb2.FINISH_REASON_CANCELLED
        # The partial output and its usage are delivered.
        assert last.usage.completion_tokens == sum(len(m.token_ids) for m in [first, *rest])
        assert last.usage.completion_tokens < 4000
        again = client.cancel("to-cancel").results[0].outcome
        assert again == generation_pb2.CANCEL_OUTCOME_ALREADY_FINISHED
        _wait_until_idle(one_slot_server)


def test_deadline_stops_the_work(one_slot_server: ServerThread) -> None:
    with one_slot_server.client() as client:
        with pytest.raises(AutoglmError) as caught:
            client.generate("Hello", timeout=0.3, **LONG)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait_until_idle(one_slot_server)
        assert client.generate("Hello", max_new_tokens=2, timeout=30).usage.completion_tokens > 0
