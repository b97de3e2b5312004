"""The generation front end: from a validated request to a stream of events, the same for both RPCs.

It checks the model name, tokenizes (text, chat template or ids), checks the fit in the context, resolves the
sampling and stopping defaults, admits the request to the pool, then feeds the worker's deltas to the request's
`RequestRun`, which turns them into text: incremental, UTF-8-safe detokenization and stop sequences matched across
token boundaries. When a stop sequence matches, or the caller goes away, the worker is told to stop that request
at its next step.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from autoglm_rpc.core import errors, request_ids
from autoglm_rpc.core.config_sections import MediaSettings
from autoglm_rpc.core.request_run import RequestRun
from autoglm_rpc.core.requests import (
    NO_OBSERVER,
    Admitted,
    ChatPrompt,
    GenerationEvent,
    GenerationObserver,
    GenerationRequest,
    Prompt,
    TokenPrompt,
)
from autoglm_rpc.media.intake import ImageIntake, PreparedImage
from autoglm_rpc.media.prompt import check_image_fit, encode_with_images
from autoglm_rpc.media.vision import VisionSpec
from autoglm_rpc.pool.pool import InFlight, WorkerPool
from autoglm_rpc.security.priority import PriorityPolicy
from autoglm_rpc.security.rate_limit import RateLimiter
from autoglm_rpc.text.checkpoint import CheckpointFacts
from autoglm_rpc.text.output import TextStream
from autoglm_rpc.text.tokenizer import ChatTemplateError, ChatTemplateMissing, TextTokenizer
from workers.protocol import SamplingParams, StoppingParams, Submit

_LONG_PROMPT_CHARS = 8192


@dataclass(frozen=True, slots=True)
class ServedModel:
    """What the gateway knows about the model before any worker is up: names, tokenizer, checkpoint facts.

    `model_id` is the name responses and listings show; `aliases` are the other names requests may use for it.
    """

    model_id: str
    source: str
    tokenizer: TextTokenizer
    facts: CheckpointFacts
    max_context_tokens: int
    default_max_new_tokens: int
    max_prompt_chars: int = 0  # 0: PROMPT_CHARS_PER_TOKEN per token of the context
    aliases: tuple[str, ...] = ()
    vision: VisionSpec | None = None  # None: a text model (images are refused with MODALITY_NOT_SUPPORTED)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the model answers to as `model`, its id first."""
        return (self.model_id, *self.aliases)


# A prompt's characters per context token beyond which it is refused before tokenizing (tokenizing costs time;
# such a prompt would almost surely be over the context anyway). `max_prompt_chars` overrides it.
PROMPT_CHARS_PER_TOKEN = 16


class Frontend:
    """Runs requests against one served model through a `WorkerPool`. Lives on the event loop."""

    def __init__(
        self,
        model: ServedModel,
        pool: WorkerPool,
        limiter: RateLimiter | None = None,
        priority: PriorityPolicy | None = None,
        media: MediaSettings | None = None,
    ) -> None:
        self.model = model
        self.pool = pool
        self.limiter = limiter or RateLimiter()
        self.priority = priority or PriorityPolicy()
        self.images = ImageIntake(media or MediaSettings(), model.vision, model.tokenizer.chat_template_source)
        self.num_active = 0  # admitted calls whose caller has not had its last event yet
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_until_idle(self) -> None:
        """Return once every admitted call has ended (its last message written, or its caller gone)."""
        await self._idle.wait()

    # -- resolving ----------------------------------------------------------------------------------------------

    def check_model(self, name: str) -> None:
        if name and name not in self.model.names:
            raise errors.ModelNotFound(name, self.model.model_id)

    @property
    def vocab_size(self) -> int:
        """Token ids below this are valid: the tokenizer's vocabulary, capped by the model's embedding rows."""
        size = self.model.tokenizer.vocab_size
        loaded = self.pool.model
        return min(size, loaded.vocab_size) if loaded else size

    @property
    def max_context_tokens(self) -> int:
        """Prompt plus output tokens a request may use: the checkpoint's context, or the workers' when it is less
        (a KV cache smaller than the context lowers a worker's limit to what the cache holds)."""
        limit = self.model.max_context_tokens
        loaded = self.pool.model
        return min(limit, loaded.max_context_tokens) if loaded else limit

    @property
    def max_prompt_chars(self) -> int:
        return self.model.max_prompt_chars or PROMPT_CHARS_PER_TOKEN * self.model.max_context_tokens

    def check_prompt_size(self, prompt: Prompt) -> None:
        """Refuse a prompt that is clearly too long before any tokenizing: its characters, or its token ids."""
        match prompt:
            case TokenPrompt(ids=ids):
                size, unit, limit = len(ids), "token ids", self.max_context_tokens - 1
            case ChatPrompt(messages=messages):
                size, unit, limit = sum(m.num_chars for m in messages), "characters", self.max_prompt_chars
            case str():
                size, unit, limit = len(prompt), "characters", self.max_prompt_chars
        if size > limit:
            raise errors.PromptTooLong(
                f"the prompt has {size} {unit}; at most {limit} are accepted "
                f"(the context limit is {self.max_context_tokens} tokens)"
            )

    async def tokenize(self, prompt: Prompt, add_special_tokens: bool = True) -> list[int]:
        """`encode` after the prompt's images are checked and counted (their tokens included)."""
        self.check_prompt_size(prompt)
        images = await self.images.prepare(prompt, self.model.model_id)
        return self.encode(prompt, add_special_tokens, images)

    def encode(
        self, prompt: Prompt, add_special_tokens: bool = True, images: tuple[PreparedImage, ...] = ()
    ) -> list[int]:
        """Token ids of a prompt, as the model will see them (each of `images` as its run of image tokens)."""
        return self._encode(prompt, add_special_tokens, images)[0]

    def _encode(
        self, prompt: Prompt, add_special_tokens: bool, images: tuple[PreparedImage, ...]
    ) -> tuple[list[int], list[int]]:
        """The prompt's ids and where each image's run starts in them."""
        self.check_prompt_size(prompt)
        match prompt:
            case TokenPrompt(ids=ids):
                vocab_size = self.vocab_size
                bad = next((i for i in ids if i >= vocab_size), None)
                if bad is not None:
                    raise errors.InvalidParameter(
                        "prompt_token_ids.ids", f"token id {bad} is outside the vocabulary (size {vocab_size})"
                    )
                return list(ids), []
            case ChatPrompt(messages=messages, add_generation_prompt=add_generation_prompt):
                if len(images) != len(prompt.images):  # a caller that skipped `ImageIntake.prepare`: a bug
                    raise RuntimeError("a chat's images must be prepared before it is encoded")
                try:
                    if images and self.model.vision is not None:
                        num_tokens = [prepared.image.num_tokens for prepared in images]
                        return encode_with_images(
                            self.model.tokenizer,
                            messages,
                            add_generation_prompt=add_generation_prompt,
                            spec=self.model.vision,
                            content_format=self.images.content_format,
                            num_tokens=num_tokens,
                        )
                    return self.model.tokenizer.encode_chat(messages, add_generation_prompt), []
                except ChatTemplateMissing:
                    raise errors.ChatTemplateMissing(self.model.model_id) from None
                except ChatTemplateError as exc:
                    raise errors.InvalidParameter(
                        "chat.messages", f"the chat template refused them: {exc}"
                    ) from None
            case str():
                return self.model.tokenizer.encode(prompt, add_special_tokens=add_special_tokens), []

    def resolve(
        self,
        request: GenerationRequest,
        deadline: float | None,
        owner: str | None = None,
        images: tuple[PreparedImage, ...] = (),
    ) -> Submit:
        """Check the request against the model and build the worker's `Submit` (with every default applied).

        `images` are the prompt's, from `ImageIntake.prepare`. The Submit's request id is scoped to `owner` (see
        `request_ids`)."""
        self.check_model(request.model)
        prompt_ids, starts = self._encode(request.prompt, True, images)
        if not prompt_ids:
            raise errors.InvalidParameter("prompt", "the prompt has no tokens")
        if images:
            room = self.max_context_tokens - (request.stopping.max_new_tokens or 1)
            num_tokens = [prepared.image.num_tokens for prepared in images]
            fields = [prepared.field for prepared in images]
            check_image_fit(starts, num_tokens, fields, room, self.max_context_tokens)
        max_new_tokens = self._max_new_tokens(len(prompt_ids), request.stopping.max_new_tokens)
        vocab_size = self.vocab_size
        bad_stop = next((i for i in request.stopping.stop_token_ids if i >= vocab_size), None)
        if bad_stop is not None:
            raise errors.InvalidParameter("stopping.stop_token_ids", f"{bad_stop} is outside the vocabulary")
        if request.output.top_logprobs > vocab_size:
            raise errors.InvalidParameter("output.top_logprobs", f"must not exceed the vocabulary ({vocab_size})")
        stop = request.stopping
        return Submit(
            request_id=request_ids.scoped(owner, request.request_id or uuid.uuid4().hex),
            prompt_ids=tuple(prompt_ids),
            sampling=self._sampling(request),
            stopping=StoppingParams(
                max_new_tokens=max_new_tokens,
                min_new_tokens=min(stop.min_new_tokens, max_new_tokens),
                eos_token_ids=tuple(self.model.facts.eos_token_ids),
                stop_token_ids=stop.stop_token_ids,
                ignore_eos=stop.ignore_eos,
                max_generation_time=stop.max_generation_time,
            ),
            return_logprobs=request.output.return_logprobs,
            top_logprobs=request.output.top_logprobs,
            priority=request.priority,
            deadline=deadline,
            images=tuple(prepared.image for prepared in images),
            constraint=request.constraint,
        )

    def _max_new_tokens(self, num_prompt_tokens: int, asked: int | None) -> int:
        limit = self.max_context_tokens
        room = limit - num_prompt_tokens
        if room < 1:
            raise errors.PromptTooLong(
                f"the prompt has {num_prompt_tokens} tokens; the context limit is {limit} (prompt plus output)"
            )
        if asked is None:
            default = self.model.facts.defaults.max_new_tokens or self.model.default_max_new_tokens
            return min(default, room)
        if asked > room:
            raise errors.PromptTooLong(
                f"the prompt has {num_prompt_tokens} tokens and stopping.max_new_tokens is {asked}: "
                f"{num_prompt_tokens + asked} is over the context limit of {limit}"
            )
        return asked

    def _sampling(self, request: GenerationRequest) -> SamplingParams:
        asked, defaults = request.sampling, self.model.facts.defaults
        temperature = defaults.temperature if asked.temperature is None else asked.temperature
        return SamplingParams(
            temperature=temperature,
            top_p=defaults.top_p if asked.top_p is None else asked.top_p,
            top_k=defaults.top_k if asked.top_k is None else asked.top_k,
            repetition_penalty=(
                defaults.repetition_penalty if asked.repetition_penalty is None else asked.repetition_penalty
            ),
            # Not in generation_config (transformers has no such penalties): unset is off.
            frequency_penalty=asked.frequency_penalty or 0.0,
            presence_penalty=asked.presence_penalty or 0.0,
            seed=secrets.randbits(63) if asked.seed is None else asked.seed,
        )

    # -- running ------------------------------------------------------------------------------------------------

    async def generate(
        self,
        request: GenerationRequest,
        deadline: float | None = None,
        owner: str | None = None,
        observer: GenerationObserver = NO_OBSERVER,
    ) -> AsyncIterator[GenerationEvent]:
        """Yield `Admitted`, then `TextDelta`s, then one `Completed`; raise `ServiceError` on failure.

        Closing the iterator early (the caller cancelled or its deadline passed) cancels the work in the worker.
        `owner` (the API key's owner) is charged the tokens (rate limits) and may cancel the request. `observer`
        (telemetry) is told every event and how the request ended; it never changes what is yielded.
        """
        # One generator from the pool to the caller: every layer here is paid once per worker step per stream.
        try:
            run = await self._start(request, deadline, owner, observer)
            try:
                prompt_tokens, seed = len(run.submit.prompt_ids), run.submit.sampling.seed
                admitted = Admitted(run.request_id, self.model.model_id, prompt_tokens, seed)
                observer.saw(admitted)
                yield admitted
                while not run.is_done:
                    for event in run.handle(await run.flight.events.get_merged()):
                        observer.saw(event)
                        yield event
            finally:
                self._finish(run, owner)
        except BaseException as error:
            observer.ended(error)
            raise
        observer.ended(None)

    async def _start(
        self,
        request: GenerationRequest,
        deadline: float | None,
        owner: str | None,
        observer: GenerationObserver,
    ) -> RequestRun:
        """Check, tokenize and admit `request`; the returned run is counted active until `_finish`."""
        arrival = time.monotonic()
        # Refuse before tokenizing when the answer is already no (draining, no worker, over capacity).
        self.check_model(request.model)
        self.priority.check(request.priority, owner)
        self.pool.check_admission()
        self.check_prompt_size(request.prompt)  # by length alone, before any tokenizer work (also off the loop)
        images = await self.images.prepare(request.prompt, self.model.model_id)  # off the loop, in its pool
        if _is_long(request.prompt):
            # Tokenizing a long prompt takes milliseconds; the tokenizer releases the GIL, so run it off the loop.
            submit = await asyncio.to_thread(self.resolve, request, deadline, owner, images)
        else:
            submit = self.resolve(request, deadline, owner, images)
        with observer.admitting():
            flight = self._admit(submit, owner)
        text = TextStream(
            self.model.tokenizer,
            request.stopping.stop_sequences,
            include_stop_sequence=request.stopping.include_stop_sequence,
            skip_special_tokens=request.output.skip_special_tokens,
        )
        self.num_active += 1
        self._idle.clear()
        return RequestRun(submit, flight, arrival, text, request_ids.public(owner, submit.request_id))

    def _finish(self, run: RequestRun, owner: str | None) -> None:
        """Release what an admitted run holds: its worker slot (cancelled unless it ended), its unused tokens."""
        request_id = run.submit.request_id
        if not run.is_done or run.must_cancel:
            self.pool.cancel(request_id)
        self.pool.detach(request_id)
        self.num_active -= 1
        if not self.num_active:
            self._idle.set()
        self.limiter.refund_tokens(owner, run.submit.stopping.max_new_tokens - run.text.num_tokens)

    def _admit(self, submit: Submit, owner: str | None) -> InFlight:
        """Charge the owner's token budget (prompt + max_new_tokens, the unused part refunded at the end), then
        hand the request to the pool."""
        cost = len(submit.prompt_ids) + submit.stopping.max_new_tokens
        self.limiter.reserve_tokens(owner, cost)
        try:
            return self.pool.submit(submit)
        except errors.DuplicateRequestId:
            self.limiter.refund_tokens(owner, cost)
            raise errors.DuplicateRequestId(request_ids.public(owner, submit.request_id)) from None
        except BaseException:
            self.limiter.refund_tokens(owner, cost)
            raise


def _is_long(prompt: Prompt) -> bool:
    match prompt:
        case str():
            return len(prompt) > _LONG_PROMPT_CHARS
        case ChatPrompt(messages=messages):
            return sum(m.num_chars for m in messages) > _LONG_PROMPT_CHARS
    return False
