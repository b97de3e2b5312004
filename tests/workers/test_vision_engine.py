"""GLM-4.1V (AutoGLM-Phone-9B's architecture) through the engine in process, on a tiny CPU checkpoint: greedy
output with images equals transformers' `generate()` token for token, however prefill is chunked, batched,
preempted or served from the prefix cache; an unusable image fails its request alone."""

from __future__ import annotations

import pytest
import torch

from tests.workers.factories import random_prompt, run_to_end, tokens_of
from tests.workers.images import VisionPrompts, image_file
from workers.engine.engine import Engine
from workers.model.loader import load_model
from workers.protocol import FailureReason, FinishReason, ImageInput, WorkerConfig

# Noise images: 150x120 gives 20 image tokens, 90x200 gives 21, 300x280 is scaled down to 56 (at most 64).
SCREEN = image_file(150, 120, seed=0)
OTHER_SCREEN = image_file(150, 120, seed=1)  # same size, so the same tokens: only the image differs
TALL = image_file(90, 200, seed=2)
BIG = image_file(300, 280, seed=3, image_format="JPEG")


@pytest.fixture(scope="module")
def prompts(glm4v_checkpoint) -> VisionPrompts:
    return VisionPrompts(glm4v_checkpoint)


@pytest.fixture(scope="module")
def reference_glm4v(glm4v_checkpoint):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(glm4v_checkpoint, dtype=torch.float32).eval()


@pytest.fixture
def vision_engine(glm4v_checkpoint):
    def make(**overrides) -> Engine:
        fields = {
            "worker_id": 0,
            "model_path": str(glm4v_checkpoint),
            "model_id": "tiny-glm4v",
            "max_batch_size": 4,
            "max_num_batched_tokens": 256,
            "num_threads": 1,
        }
        config = WorkerConfig(**{**fields, **overrides})
        engine = Engine.from_loaded(load_model(config, lambda stage, fraction: None), config)
        engine.warm_up()
        return engine

    return make


def check_all(engine, prompts, model, arrivals: dict[int, list]) -> dict[str, list]:
    deltas = run_to_end(engine, arrivals)
    assert not engine.pop_failures()
    for submits in arrivals.values():
        for submit in submits:
            assert tokens_of(deltas[submit.request_id]) == prompts.reference(model, submit), submit.request_id
            assert deltas[submit.request_id][-1].finish.reason is FinishReason.MAX_NEW_TOKENS
    return deltas


def test_one_image_equals_generate_and_the_image_matters(vision_engine, prompts, reference_glm4v):
    engine = vision_engine()
    first = prompts.submit("a", [None, "What is on the screen?"], [SCREEN], 10)
    second = prompts.submit("b", [None, "What is on the screen?"], [OTHER_SCREEN], 10)
    deltas = check_all(engine, prompts, reference_glm4v, {0: [first], 1: [second]})
    assert first.images[0].num_tokens == 20 and first.prompt_ids == second.prompt_ids
    assert tokens_of(deltas["a"]) != tokens_of(deltas["b"]), "the image changed no token: the test cannot fail"


def test_two_images_in_one_prompt(vision_engine, prompts, reference_glm4v):
    engine = vision_engine()
    request = prompts.submit("a", ["Compare ", None, " with ", None, " please."], [TALL, BIG], 10)
    assert [image.num_tokens for image in request.images] == [21, 56]
    check_all(engine, prompts, reference_glm4v, {0: [request]})


@pytest.mark.parametrize("decode_mode", ["eager", "static"])
def test_chunk_boundaries_inside_images_beside_text_requests(decode_mode, vision_engine, prompts, reference_glm4v):
    """A budget of 12 tokens splits every image over several chunks and steps; text-only requests share the
    batches (their positions are 1-D, theirs M-RoPE); static decode carries each row's rope delta."""
    engine = vision_engine(max_num_batched_tokens=12, decode_mode=decode_mode)
    arrivals = {
        0: [
            prompts.submit("img1", ["Tap ", None, " now"], [SCREEN], 8),
            prompts.submit("text1", ["Just text, no image at all here."], [], 7),
        ],
        2: [prompts.submit("img2", [None, "and", None], [TALL, OTHER_SCREEN], 9)],
        3: [prompts.submit("text2", ["Another plain question"], [], 6)],
    }
    check_all(engine, prompts, reference_glm4v, arrivals)


def test_preemption_recomputes_images(vision_engine, prompts, reference_glm4v):
    engine = vision_engine(kv_cache_tokens=96, kv_block_size=8, max_num_batched_tokens=16, max_seq_len=96)
    arrivals = {
        0: [
            prompts.submit("a", ["One ", None], [SCREEN], 20),
            prompts.submit("b", ["Two ", None], [TALL], 20),
            prompts.submit("c", ["Three ", None], [OTHER_SCREEN], 20),
        ]
    }
    check_all(engine, prompts, reference_glm4v, arrivals)
    assert engine.scheduler.stats.num_preemptions > 0


def test_prefix_cache_keys_blocks_by_their_images(vision_engine, prompts, reference_glm4v):
    engine = vision_engine(kv_block_size=8)
    parts = ["A long shared instruction before the screenshot: ", None, " What next?"]
    first = prompts.submit("first", parts, [SCREEN])
    image_start = first.prompt_ids.index(prompts.image_token_id)
    check_all(engine, prompts, reference_glm4v, {0: [first]})
    stats = engine.scheduler.stats

    same = prompts.submit("same", parts, [SCREEN])
    before = stats.num_cached_tokens
    check_all(engine, prompts, reference_glm4v, {0: [same]})
    cached_same = stats.num_cached_tokens - before
    assert cached_same > image_start + first.images[0].num_tokens  # past the image: its blocks were reused

    other = prompts.submit("other", parts, [OTHER_SCREEN])
    assert other.prompt_ids == first.prompt_ids
    before = stats.num_cached_tokens
    check_all(engine, prompts, reference_glm4v, {0: [other]})
    cached_other = stats.num_cached_tokens - before
    assert 0 < cached_other <= image_start  # the text before the image hits, no block holding image tokens


def test_unusable_images_fail_their_request_alone(vision_engine, prompts, reference_glm4v, glm4v_checkpoint):
    engine = vision_engine()
    good = prompts.submit("good", [None, "fine"], [SCREEN], 5)
    image = good.images[0]
    wrong_count = prompts.submit("count", [None, "x"], [SCREEN])
    wrong_count = _with_images(wrong_count, (ImageInput(TALL, "image/png", image.num_tokens, image.content_hash),))
    garbage = _with_images(good, (ImageInput(b"not an image", "image/png", image.num_tokens, "0" * 64),))
    missing = _with_images(good, ())
    for request_id, request in (("count", wrong_count), ("garbage", garbage), ("missing", missing)):
        engine.add(_renamed(request, request_id))
    failures = {failure.request_id: failure for failure in engine.pop_failures()}
    assert set(failures) == {"count", "garbage", "missing"}
    assert all(failure.reason is FailureReason.INVALID_PARAMETER for failure in failures.values())
    assert "gives 21 image tokens" in failures["count"].message and "holds 20" in failures["count"].message
    assert "cannot be decoded" in failures["garbage"].message
    assert "20 image tokens" in failures["missing"].message
    check_all(engine, prompts, reference_glm4v, {0: [good]})


def test_an_image_broken_past_its_header_fails_its_request_in_the_step(vision_engine, prompts, reference_glm4v):
    engine = vision_engine()
    truncated = SCREEN[: len(SCREEN) // 2]  # the header reads, the pixels do not
    request = prompts.submit("broken", [None, "x"], [SCREEN])
    request = _with_images(request, (ImageInput(truncated, "image/png", 20, request.images[0].content_hash),))
    text = prompts.submit("text", ["Only words here"], [], 6)
    engine.add(request)
    assert not engine.pop_failures()  # its size is right: the pixels are decoded in the background
    deltas = run_to_end(engine, {0: [text]})
    (failure,) = engine.pop_failures()
    assert failure.request_id == "broken" and failure.reason is FailureReason.INVALID_PARAMETER
    assert "cannot be decoded" in failure.message and "broken" not in deltas
    assert tokens_of(deltas["text"]) == prompts.reference(reference_glm4v, text)


def test_a_text_model_refuses_images(make_engine, prompts, submit):
    engine = make_engine("glm")
    engine.add(_with_images(submit("a", random_prompt(8, seed=1)), (prompts.image(SCREEN),)))
    (failure,) = engine.pop_failures()
    assert failure.reason is FailureReason.INVALID_PARAMETER and "takes no images" in failure.message
    assert not engine.has_work()


def _with_images(submit, images):
    import dataclasses

    return dataclasses.replace(submit, images=images)


def _renamed(submit, request_id):
    import dataclasses

    return dataclasses.replace(submit, request_id=request_id)


def test_out_of_memory_in_the_vision_tower_fails_only_its_requests(
    vision_engine, prompts, reference_glm4v, monkeypatch
):
    engine = vision_engine()

    def out_of_memory(pixel_values, grids):
        raise torch.OutOfMemoryError("no room for the vision tower")

    monkeypatch.setattr(engine.runner.vision, "encode", out_of_memory)
    text = prompts.submit("text", ["Only words here"], [], 6)
    deltas = run_to_end(engine, {0: [prompts.submit("image", [None, "x"], [SCREEN]), text]})
    (failure,) = engine.pop_failures()
    assert failure.request_id == "image" and failure.reason is FailureReason.GPU_OUT_OF_MEMORY
    assert "image" not in deltas and tokens_of(deltas["text"]) == prompts.reference(reference_glm4v, text)
    assert not engine.has_work() and engine.scheduler.pool.num_used == 0
