"""A real worker process, spawned the way the gateway spawns it, spoken to over a multiprocessing Pipe."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.workers.images import VisionPrompts, image_file
from workers.process import entry
from workers.protocol import (
    Cancel,
    FailureReason,
    FinishReason,
    ImageInput,
    LoadProgress,
    Ready,
    RequestFailed,
    Shutdown,
    StepOutput,
    WorkerConfig,
    WorkerFailed,
)

TIMEOUT = 60.0


@contextmanager
def spawned_worker(config: WorkerConfig) -> Iterator[tuple[multiprocessing.Process, object]]:
    """Start entry.main in a spawned process; it is always gone when the block ends."""
    context = multiprocessing.get_context("spawn")
    parent_conn, child_conn = context.Pipe()
    process = context.Process(target=entry.main, args=(child_conn, config), daemon=True)
    process.start()
    child_conn.close()
    try:
        yield process, parent_conn
    finally:
        parent_conn.close()
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()


def receive(conn, timeout: float = TIMEOUT):
    if not conn.poll(timeout):
        raise AssertionError(f"no message from the worker within {timeout}s")
    return conn.recv()


def wait_ready(conn) -> tuple[list[LoadProgress], Ready]:
    progress = []
    while True:
        message = receive(conn)
        if isinstance(message, Ready):
            return progress, message
        assert isinstance(message, LoadProgress), message
        progress.append(message)


def test_worker_serves_batches_cancels_and_shuts_down(worker_config, submit):
    config = worker_config("glm", max_batch_size=4, max_num_batched_tokens=16, worker_id=3)
    with spawned_worker(config) as (process, conn):
        progress, ready = wait_ready(conn)
        assert {p.stage for p in progress} >= {"loading weights", "allocating KV cache"}
        fractions = [p.fraction for p in progress]
        assert fractions == sorted(fractions) and all(0.0 <= f <= 1.0 for f in fractions)
        assert ready.worker_id == 3 and ready.model.model_id == "tiny-glm"
        assert ready.model.architecture == "GlmForCausalLM" and ready.model.max_context_tokens == 512

        for i in range(3):
            conn.send(submit(f"r{i}", tuple(range(5, 10 + 7 * i)), 40 if i else 400))
        tokens: dict[str, list[int]] = {}
        finishes = {}
        has_shared_step = False
        while len(finishes) < 3:
            output = receive(conn)
            assert isinstance(output, StepOutput), output
            has_shared_step |= sum(bool(delta.token_ids) for delta in output.deltas) >= 2
            for delta in output.deltas:
                tokens.setdefault(delta.request_id, []).extend(delta.token_ids)
                if delta.finish is not None:
                    finishes[delta.request_id] = delta.finish.reason
            if len(tokens.get("r0", [])) >= 5 and "r0" not in finishes:
                conn.send(Cancel(request_ids=("r0",)))
        assert has_shared_step, "one StepOutput carries the tokens of several requests"
        assert finishes == {
            "r0": FinishReason.CANCELLED,
            "r1": FinishReason.MAX_NEW_TOKENS,
            "r2": FinishReason.MAX_NEW_TOKENS,
        }
        assert 5 <= len(tokens["r0"]) < 400 and len(tokens["r1"]) == len(tokens["r2"]) == 40

        conn.send(Shutdown())
        process.join(timeout=10)
        assert process.exitcode == 0


def test_worker_exits_cleanly_when_the_gateway_goes_away(worker_config):
    with spawned_worker(worker_config("llama")) as (process, conn):
        wait_ready(conn)
        conn.close()
        process.join(timeout=10)
        assert process.exitcode == 0


@pytest.mark.parametrize("problem", ["no_checkpoint", "bad_dtype"])
def test_worker_reports_a_failed_load_and_exits_nonzero(problem, worker_config, tmp_path):
    overrides = {"model_path": str(tmp_path / "missing")} if problem == "no_checkpoint" else {"dtype": "int3"}
    with spawned_worker(worker_config("glm", **overrides)) as (process, conn):
        message = receive(conn)
        while isinstance(message, LoadProgress):
            message = receive(conn)
        assert isinstance(message, WorkerFailed) and message.worker_id == 0
        if problem == "bad_dtype":
            assert "dtype" in message.message
        process.join(timeout=10)
        assert process.exitcode == 1


def test_worker_serves_images_over_the_pipe(glm4v_checkpoint):
    """GLM-4.1V in a real worker process: the image files cross the pipe as bytes, the worker decodes them, and
    the tokens equal transformers' `generate()`; an image whose token count is wrong fails that request alone."""
    import dataclasses

    import torch
    from transformers import AutoModelForImageTextToText

    prompts = VisionPrompts(glm4v_checkpoint)
    good = prompts.submit("good", ["Where do I tap? ", None], [image_file(150, 120, seed=5)], 12)
    wrong = dataclasses.replace(
        good,
        request_id="wrong",
        images=(ImageInput(image_file(90, 200, seed=6), "image/png", 20, good.images[0].content_hash),),
    )
    config = WorkerConfig(
        worker_id=1, model_path=str(glm4v_checkpoint), model_id="tiny-glm4v", max_num_batched_tokens=16
    )
    with spawned_worker(config) as (process, conn):
        _, ready = wait_ready(conn)
        assert ready.model.architecture == "Glm4vForConditionalGeneration"
        conn.send(wrong)
        conn.send(good)
        tokens: list[int] = []
        failures = []
        finished = False
        while not finished:
            message = receive(conn)
            if isinstance(message, RequestFailed):
                failures.append(message)
                continue
            assert isinstance(message, StepOutput), message
            for delta in message.deltas:
                assert delta.request_id == "good"
                tokens.extend(delta.token_ids)
                finished |= delta.finish is not None
        conn.send(Shutdown())
        process.join(timeout=10)
        assert process.exitcode == 0
    assert [(f.request_id, f.reason) for f in failures] == [("wrong", FailureReason.INVALID_PARAMETER)]
    assert "gives 21 image tokens" in failures[0].message
    model = AutoModelForImageTextToText.from_pretrained(glm4v_checkpoint, dtype=torch.float32).eval()
    assert tokens == prompts.reference(model, good)
