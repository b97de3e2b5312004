"""The HTTP edge without a server: OpenAI bodies to requests (every bad field named), and the one map from the
error taxonomy to HTTP statuses."""

from __future__ import annotations

import pytest

from autoglm_rpc.core import errors
from autoglm_rpc.core.requests import ChatPrompt, ImagePart, RequestLimits, TextPart, TokenPrompt
from autoglm_rpc.openai_api import convert, schemas
from autoglm_rpc.openai_api.errors import service_error_body

LIMITS = RequestLimits(max_stop_sequences=2, max_stop_sequence_chars=8, max_top_logprobs=4)
CHAT = [{"role": "user", "content": "hi"}]


def _chat(**fields: object):
    return convert.chat_request(schemas.ChatCompletionRequest.model_validate({"messages": CHAT, **fields}), LIMITS)


def _completion(**fields: object):
    body = schemas.CompletionRequest.model_validate({"prompt": "hi", **fields})
    return convert.completion_request(body, LIMITS)


def test_fields_map_onto_the_request() -> None:
    request = _chat(
        model="m", max_completion_tokens=5, temperature=0.5, top_p=0.9, seed=3, stop="END", top_k=-1,
        min_tokens=2, repetition_penalty=1.1, ignore_eos=True, logprobs=True, top_logprobs=2,
        frequency_penalty=0.2, presence_penalty=-1.5,
        messages=[{"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
    )  # fmt: skip
    assert request.prompt == ChatPrompt((request.prompt.messages[0],))
    assert (request.prompt.messages[0].role, request.prompt.messages[0].content) == ("system", "ab")
    assert request.model == "m" and request.stopping.max_new_tokens == 5 and request.stopping.min_new_tokens == 2
    assert (request.sampling.temperature, request.sampling.top_p, request.sampling.seed) == (0.5, 0.9, 3)
    assert request.sampling.top_k == 0 and request.sampling.repetition_penalty == 1.1
    assert (request.sampling.frequency_penalty, request.sampling.presence_penalty) == (0.2, -1.5)
    assert _completion().sampling.frequency_penalty is None  # unset: off (the front end resolves it to 0)
    assert request.stopping.stop_sequences == ("END",) and request.stopping.ignore_eos
    assert request.output.return_logprobs and request.output.top_logprobs == 2
    assert _completion(prompt=[[5, 6, 7]], logprobs=0).prompt == TokenPrompt((5, 6, 7))
    assert _completion(prompt=["text"]).prompt == "text"
    assert _completion(logprobs=3).output.top_logprobs == 3


@pytest.mark.parametrize(
    ("make", "fields", "param"),
    [
        (_chat, {"temperature": 101}, "temperature"),
        (_chat, {"top_p": 0}, "top_p"),
        (_chat, {"seed": -1}, "seed"),
        (_chat, {"n": 3}, "n"),
        (_chat, {"frequency_penalty": 2.1}, "frequency_penalty"),
        (_completion, {"presence_penalty": -2.5}, "presence_penalty"),
        (_chat, {"logit_bias": {"1": 2}}, "logit_bias"),
        (_chat, {"tools": []}, "tools"),
        (_chat, {"max_tokens": 3, "max_completion_tokens": 3}, "max_completion_tokens"),
        (_chat, {"max_completion_tokens": 0}, "max_completion_tokens"),
        (_chat, {"top_logprobs": 2}, "top_logprobs"),
        (_chat, {"logprobs": True, "top_logprobs": 5}, "top_logprobs"),
        (_chat, {"stop": ["a", "b", "c"]}, "stop"),
        (_chat, {"stop": ["a", "much too long"]}, "stop[1]"),
        (_chat, {"min_tokens": 9, "max_tokens": 3}, "min_tokens"),
        (_chat, {"messages": []}, "messages"),
        (_chat, {"messages": [{"role": "", "content": "x"}]}, "messages[0].role"),
        (_completion, {"prompt": ""}, "prompt"),
        (_completion, {"prompt": ["a", "b"]}, "prompt"),
        (_completion, {"prompt": [1, -2]}, "prompt"),
        (_completion, {"logprobs": 5}, "logprobs"),
        (_completion, {"echo": True}, "echo"),
        (_completion, {"best_of": 2}, "best_of"),
        (_completion, {"suffix": "x"}, "suffix"),
    ],
)
def test_bad_fields_are_named(make, fields: dict, param: str) -> None:
    with pytest.raises(errors.InvalidParameter) as caught:
        make(**fields)
    assert caught.value.field == param


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.InvalidParameter("prompt_token_ids.ids", "bad"), 400, "invalid_parameter"),
        (errors.PromptTooLong("long"), 400, "prompt_too_long"),
        (errors.ChatTemplateMissing("m"), 400, "chat_template_missing"),
        (errors.Unauthenticated("who"), 401, None),
        (errors.PermissionDenied("not yours"), 403, None),
        (errors.ModelNotFound("a", "b"), 404, "model_not_found"),
        (errors.DuplicateRequestId("x"), 409, "duplicate_request_id"),
        (errors.QueueFull(3, 3, retry_after=0.2), 429, "queue_full"),
        (errors.RateLimited("slow down", None), 429, "rate_limited"),
        (errors.OutOfMemory("oom"), 503, "gpu_out_of_memory"),
        (errors.NoReadyWorker(), 503, "no_ready_worker"),
        (errors.ServerDraining(), 503, "server_draining"),
        (errors.WorkerCrashed(0), 503, "worker_crashed"),
        (errors.WorkerHung(0, 120.0), 503, "worker_hung"),
        (errors.TooManyWatchers(100), 429, "too_many_health_watchers"),
        (errors.DeadlineExceeded(), 504, None),
        (errors.InternalError("r"), 500, "internal_error"),
    ],
)
def test_one_map_from_the_taxonomy_to_http(error: errors.ServiceError, status: int, code: str | None) -> None:
    got_status, body, headers = service_error_body(error)
    assert (got_status, body["error"]["code"]) == (status, code)
    assert ("Retry-After" in headers) == (error.retry_after is not None)
    if isinstance(error, errors.InvalidParameter):
        assert body["error"]["param"] == "prompt" and body["error"]["message"] == "prompt: bad"
    if isinstance(error, errors.QueueFull):
        assert headers["Retry-After"] == "1"  # whole seconds, rounded up


def test_image_url_parts_become_image_parts_named_as_openai_names_them() -> None:
    parts = [
        {"type": "text", "text": "look "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
    ]
    request = _chat(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": parts}])
    system, user = request.prompt.messages
    assert (system.content, system.parts) == ("s", ())
    assert user.content == "" and user.parts[0] == TextPart("look ")
    assert user.parts[1] == ImagePart("messages[1].content[1]", url="data:image/png;base64,AAAA")
    assert request.prompt.images == (user.parts[1],) and user.num_chars == 5
    with pytest.raises(errors.InvalidParameter, match="only text and image_url parts") as refused:
        _chat(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])
    assert refused.value.field == "messages[0].content[0]"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.ImageInvalid("messages[2].content[1]", "bad"), "image_invalid"),
        (errors.TooManyImages("messages[2].content[1]", 10), "too_many_images"),
        (errors.ModalityNotSupported("messages[2].content[1]", "m"), "modality_not_supported"),
        (errors.ImageOverflowsContext("messages[2].content[1]", "long"), "prompt_too_long"),
    ],
)
def test_image_errors_are_400s_naming_the_part(error: errors.ServiceError, code: str) -> None:
    status, body, _ = service_error_body(error)
    assert (status, body["error"]["code"], body["error"]["param"]) == (400, code, "messages[2].content[1]")
    assert body["error"]["message"].startswith("messages[2].content[1]: ")
