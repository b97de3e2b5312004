"""The engine: continuous batching at iteration level over one model.

Requests join and leave the running batch at every step. A step schedules (see `workers.engine.scheduler`), runs
the model and samples (`workers.engine.runner`), appends the tokens and decides finishes, and returns the step's
deltas: the new tokens of every request that produced one, and the last delta (with its finish) of every
request that ended. A request that fails alone (bad parameters, out of memory in its own forward) leaves with
a `RequestFailed`; any other exception escapes `step` and means the engine is broken. A request's images are
sized and checked when it is added (`workers.engine.multimodal`): one that cannot be used fails that request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from workers.engine.grammar import GrammarCompiler, GrammarError
from workers.engine.multimodal import prepare_images
from workers.engine.runner import ModelRunner, RunnerOutput
from workers.engine.scheduler import Scheduler
from workers.engine.sequence import ScheduledBatch, Sequence
from workers.engine.static_decode import resolve_decode_mode
from workers.kv.blocks import BlockPool, PrefixStats
from workers.model.vision import ImageError
from workers.protocol import (
    FailureReason,
    RequestDelta,
    RequestFailed,
    SamplingParams,
    StepOutput,
    StoppingParams,
    Submit,
    WorkerConfig,
)
from workers.telemetry.probe import NULL_PROBE, StepProbe

if TYPE_CHECKING:  # the engine is built from a loaded model; loading is the worker process's (process/load.py)
    from workers.model.loader import LoadedModel

logger = logging.getLogger(__name__)


class Engine:
    """One model, one scheduler, one runner. Not thread-safe: the worker loop calls everything."""

    def __init__(self, runner: ModelRunner, scheduler: Scheduler, grammars: GrammarCompiler | None = None) -> None:
        """`grammars` compiles the requests' constraints; without it a constrained request fails."""
        self.runner = runner
        self.scheduler = scheduler
        self.grammars = grammars
        self.vocab_size = runner.vocab_size
        self._failures: list[RequestFailed] = []
        self.longest_step = 0.0  # seconds of the longest step so far (warm-up included): the watchdog's yardstick
        # Sees the phases of a step; a no-op except on the steps that `workers.telemetry` traces.
        self.probe: StepProbe = NULL_PROBE

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, config: WorkerConfig) -> Engine:
        spec = loaded.cache.spec
        pool = BlockPool(spec.num_blocks, spec.block_size, enable_prefix_caching=config.enable_prefix_caching)
        max_seq_len = loaded.info.max_context_tokens
        scheduler = Scheduler(config.max_batch_size, max_seq_len, config.max_num_batched_tokens, pool)
        decode_mode = resolve_decode_mode(config.decode_mode, spec.device)
        runner = ModelRunner(
            loaded.model,
            loaded.cache,
            config.max_batch_size,
            max_seq_len,
            decode_mode,
            mirror=loaded.mirror,
            vision=loaded.vision,
        )
        return cls(runner, scheduler, GrammarCompiler.for_checkpoint(config.model_path, runner.vocab_size))

    def add(self, submit: Submit) -> None:
        """Queue a request; an invalid one becomes a `RequestFailed` (see `pop_failures`) and is not queued."""
        problem = self._validate(submit)
        if problem is None:
            try:  # sizes the images, starts their preprocessing, computes the prompt's M-RoPE positions: once
                images, vision = prepare_images(submit, self.runner.vision)
            except ImageError as exc:
                problem = FailureReason.INVALID_PARAMETER, str(exc)
        if problem is not None:
            reason, message = problem
            self._failures.append(RequestFailed(submit.request_id, reason, message))
            return
        seq = Sequence.from_submit(submit, time.monotonic())
        seq.images, seq.vision = images, vision
        if submit.constraint is not None:
            try:
                if self.grammars is None:
                    raise GrammarError("this engine has no tokenizer to compile constraints with")
                seq.grammar = self.grammars.state(submit.constraint)
            except GrammarError as exc:
                message = f"constraint ({submit.constraint.kind.value}) does not compile: {exc}"
                self._failures.append(RequestFailed(submit.request_id, FailureReason.INVALID_PARAMETER, message))
                return
        self.scheduler.add(seq)

    def cancel(self, request_ids: Iterable[str]) -> None:
        """Cancelled requests end at the next step with a final CANCELLED delta; unknown ids are ignored."""
        self.scheduler.cancel(request_ids)

    def withdraw(self, count: int) -> list[str]:
        """Give back up to `count` requests not started yet (see `Scheduler.withdraw`); their ids."""
        return self.scheduler.withdraw(count)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def pop_failures(self) -> list[RequestFailed]:
        """The requests that failed since the last call, each reported once."""
        failures, self._failures = self._failures, []
        return failures

    def step(self) -> StepOutput:
        """Schedule, run the model, sample, finish what must stop, and return every request's new tokens."""
        start = time.monotonic()
        batch = self.scheduler.schedule(start)
        self.probe.scheduled(batch)
        output = self.runner.execute(batch) if batch.has_model_work else RunnerOutput()
        self.probe.executed()
        self._fail_requests(output.failed)
        end = time.monotonic()
        self.scheduler.postprocess(batch, zip(output.rows, output.token_ids, strict=True), end)
        self.longest_step = max(self.longest_step, end - start)
        return self._collect(batch, output)

    def warm_up(self) -> None:
        """Run one request through every stage so a broken model fails before the worker reports Ready; and one
        with the smallest image through a vision-language model's image path.

        Its prompt fills a whole step's token budget (as far as the context allows): the longest prefill step a
        worker runs is then measured before it serves (`longest_step`, which the gateway's watchdog sizes its
        timeout from), and the memory a full step needs is used once. Its prompt tokens are not counted in the
        worker's statistics."""
        scheduler = self.scheduler
        num_prompt_tokens = max(2, min(scheduler.max_num_batched_tokens, scheduler.max_seq_len - 3))
        stopping = StoppingParams(max_new_tokens=2, ignore_eos=True)
        self.add(Submit("__warmup__", (0,) * num_prompt_tokens, SamplingParams(), stopping))
        vision = self.runner.vision
        if vision is not None:
            image = vision.warm_up_image()
            prompt = (0, *[vision.image_token_id] * image.num_tokens, 0)
            if len(prompt) < scheduler.max_seq_len:
                self.add(Submit("__warmup_image__", prompt, SamplingParams(), stopping, images=(image,)))
        while self.has_work():
            self.step()
        failures = self.pop_failures()
        if failures:
            raise RuntimeError(f"warm-up request failed: {failures[0].message}")
        scheduler.stats = PrefixStats()
        self.runner.capture_graphs()

    def _collect(self, batch: ScheduledBatch, output: RunnerOutput) -> StepOutput:
        deltas = [
            RequestDelta(
                request_id=seq.request_id,
                token_ids=(token_id,),
                logprobs=() if logprob is None else (logprob,),
                finish=seq.finish,
            )
            for seq, token_id, logprob in zip(output.rows, output.token_ids, output.logprobs, strict=True)
        ]
        deltas.extend(RequestDelta(seq.request_id, token_ids=(), finish=seq.finish) for seq in batch.retired)
        scheduler = self.scheduler
        pool, stats = scheduler.pool, scheduler.stats
        return StepOutput(
            deltas=tuple(deltas),
            num_running=scheduler.num_running,
            num_waiting=scheduler.num_waiting,
            kv_cache_usage=pool.num_used / pool.capacity,
            kv_blocks_used=pool.num_used,
            kv_blocks_free=pool.num_free,
            prompt_tokens=stats.num_prompt_tokens,
            cached_prompt_tokens=stats.num_cached_tokens,
            preemptions=stats.num_preemptions,
            longest_step=self.longest_step,
        )

    def _fail_requests(self, failed: list[tuple[Sequence, BaseException]]) -> None:
        for seq, exc in failed:
            logger.warning("request %s failed: %s", seq.request_id, exc)
            self.scheduler.abort(seq)
            if isinstance(exc, ImageError):  # an image broken past its header, found when it was preprocessed
                self._failures.append(RequestFailed(seq.request_id, FailureReason.INVALID_PARAMETER, str(exc)))
                continue
            reason = FailureReason.GPU_OUT_OF_MEMORY
            self._failures.append(RequestFailed(seq.request_id, reason, f"out of memory while running it: {exc}"))

    def _validate(self, submit: Submit) -> tuple[FailureReason, str] | None:
        """What only this worker can see is wrong with a request, or None: a duplicate id, a prompt over its
        context or KV cache, ids outside its model's vocabulary. Value ranges are the edge's to check (with the
        caller's field names) and the message types' invariants (`SamplingParams`, `StoppingParams`, `Submit`)."""
        if submit.request_id in self.scheduler.requests:
            return FailureReason.DUPLICATE_REQUEST_ID, f"request id {submit.request_id!r} is already in flight"
        prompt = submit.prompt_ids
        if len(prompt) >= self.scheduler.max_seq_len:
            limit = self.scheduler.max_seq_len
            return (
                FailureReason.PROMPT_TOO_LONG,
                f"the prompt has {len(prompt)} tokens; the limit is {limit - 1} (the context, or the KV cache's "
                f"{self.scheduler.pool.capacity * self.scheduler.pool.block_size} tokens if that is smaller)",
            )
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            return FailureReason.INVALID_PARAMETER, f"prompt token ids must be in [0, {self.vocab_size})"
        if submit.top_logprobs > self.vocab_size:
            return FailureReason.INVALID_PARAMETER, f"top_logprobs must be at most {self.vocab_size}"
        stop_ids = submit.stopping.stop_token_ids
        if stop_ids and (min(stop_ids) < 0 or max(stop_ids) >= self.vocab_size):
            return FailureReason.INVALID_PARAMETER, f"stop token ids must be in [0, {self.vocab_size})"
        return None
