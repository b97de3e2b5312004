"""The batching policy with no model at all: budgets, chunking, admission order, slots and every finish."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workers.engine.scheduler import Scheduler
from workers.engine.sequence import ScheduledBatch, Sequence, SequenceStatus
from workers.protocol import FinishReason, Priority, SamplingParams, StoppingParams

EOS = 0


def make_seq(
    request_id: str,
    num_prompt_tokens: int = 4,
    *,
    priority: Priority = Priority.NORMAL,
    arrival_time: float = 0.0,
    deadline: float | None = None,
    **stopping,
) -> Sequence:
    stopping.setdefault("max_new_tokens", 100)
    stopping.setdefault("eos_token_ids", (EOS,))
    return Sequence(
        request_id=request_id,
        prompt_ids=tuple(range(1, num_prompt_tokens + 1)),
        sampling=SamplingParams(),
        stopping=StoppingParams(**stopping),
        arrival_time=arrival_time,
        priority=priority,
        deadline=deadline,
    )


def run_step(scheduler: Scheduler, now: float = 0.0, token_id: int = 7) -> tuple[ScheduledBatch, list[Sequence]]:
    """One step where the 'model' samples `token_id` for every row that produces a token."""
    batch = scheduler.schedule(now)
    producing = batch.decodes + [chunk.seq for chunk in batch.prefills if chunk.is_last]
    finished = scheduler.postprocess(batch, [(seq, token_id) for seq in producing], now)
    return batch, finished


def chunk_sizes(batch: ScheduledBatch) -> dict[str, int]:
    return {chunk.seq.request_id: len(chunk.token_ids) for chunk in batch.prefills}


def test_long_prompt_is_chunked_and_never_stalls_decodes() -> None:
    scheduler = Scheduler(max_batch_size=4, max_seq_len=512, max_num_batched_tokens=16)
    short = make_seq("short", 3)
    scheduler.add(short)
    run_step(scheduler)  # short's whole prompt: its first token
    scheduler.add(make_seq("long", 40))
    sizes = []
    for _ in range(4):
        batch, _ = run_step(scheduler)
        assert batch.decodes[0] is short
        assert batch.num_tokens <= 16
        sizes.append(chunk_sizes(batch).get("long", 0))
    assert sizes == [15, 15, 10, 0]  # 1 token of the budget always goes to short's decode
    assert len(scheduler.requests["long"].output_ids) == 2  # first token after the last chunk, then a decode


def test_admission_fills_the_budget_left_after_decodes_and_prefills() -> None:
    scheduler = Scheduler(max_batch_size=4, max_seq_len=512, max_num_batched_tokens=16)
    scheduler.add(make_seq("a", 12))
    scheduler.add(make_seq("b", 10))
    scheduler.add(make_seq("c", 3))
    batch, _ = run_step(scheduler)
    assert chunk_sizes(batch) == {"a": 12, "b": 4}  # c waits: no budget left, although a slot is free
    batch, _ = run_step(scheduler)
    assert [seq.request_id for seq in batch.decodes] == ["a"]
    assert chunk_sizes(batch) == {"b": 6, "c": 3}
    assert scheduler.num_waiting == 0


def test_priority_first_then_first_come_first_served() -> None:
    scheduler = Scheduler(max_batch_size=1, max_seq_len=512, max_num_batched_tokens=16)
    for request_id, priority in [("low", Priority.LOW), ("n1", Priority.NORMAL), ("high", Priority.HIGH)]:
        scheduler.add(make_seq(request_id, 2, priority=priority, max_new_tokens=1))
    scheduler.add(make_seq("n2", 2, max_new_tokens=1))
    order = []
    while scheduler.has_work():
        batch, finished = run_step(scheduler)
        order += [chunk.seq.request_id for chunk in batch.prefills]
        assert [seq.finish.reason for seq in finished] == [FinishReason.MAX_NEW_TOKENS]
    assert order == ["high", "n1", "n2", "low"]


def test_withdraw_gives_back_only_requests_never_admitted_lowest_priority_and_newest_first() -> None:
    scheduler = Scheduler(max_batch_size=1, max_seq_len=512, max_num_batched_tokens=16)
    scheduler.add(make_seq("low", 2, priority=Priority.LOW))
    started = make_seq("started", 2)
    scheduler.add(started)
    run_step(scheduler)  # admits "started", which gets its first token ("low" waits)
    scheduler._preempt(started)  # back in the queue, but it was admitted and has a token: it stays
    for request_id, priority in [("high", Priority.HIGH), ("n1", Priority.NORMAL), ("n2", Priority.NORMAL)]:
        scheduler.add(make_seq(request_id, 2, priority=priority))
    scheduler.add(make_seq("cancelled", 2, priority=Priority.LOW))
    scheduler.cancel(["cancelled"])  # leaves at the next step with its CANCELLED finish, from here
    assert scheduler.withdraw(3) == ["low", "n2", "n1"]
    assert [seq.request_id for seq in scheduler.waiting] == ["high", "started", "cancelled"]
    assert set(scheduler.requests) == {"high", "started", "cancelled"}
    assert scheduler.withdraw(5) == ["high"] and scheduler.withdraw(5) == []


def test_slots_are_exclusive_and_reused_after_finish() -> None:
    scheduler = Scheduler(max_batch_size=2, max_seq_len=512, max_num_batched_tokens=16)
    first, second, third = make_seq("a", 2, max_new_tokens=1), make_seq("b", 2, max_new_tokens=3), make_seq("c", 2)
    for seq in (first, second, third):
        scheduler.add(seq)
    _, finished = run_step(scheduler)
    assert (first.slot, second.slot) == (None, 1)  # a finished at once and gave its slot back
    assert finished == [first] and third.status is SequenceStatus.WAITING  # no slot when c was considered
    run_step(scheduler)
    assert third.slot == 0 and third.status is SequenceStatus.RUNNING


def test_budget_must_cover_a_full_batch_of_decodes() -> None:
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        Scheduler(max_batch_size=8, max_seq_len=512, max_num_batched_tokens=4)


def test_eos_finishes_with_its_id_unless_ignored() -> None:
    scheduler = Scheduler(max_batch_size=2, max_seq_len=512, max_num_batched_tokens=16)
    stops, ignores = make_seq("stops"), make_seq("ignores", ignore_eos=True)
    scheduler.add(stops)
    scheduler.add(ignores)
    _, finished = run_step(scheduler, token_id=EOS)
    assert finished == [stops]
    assert stops.finish.reason is FinishReason.EOS_TOKEN and stops.finish.stop_token_id == EOS
    assert stops.output_ids == [EOS]
    assert ignores.status is SequenceStatus.RUNNING


def test_stop_token_and_min_new_tokens() -> None:
    scheduler = Scheduler(max_batch_size=1, max_seq_len=512, max_num_batched_tokens=16)
    seq = make_seq("a", min_new_tokens=2, stop_token_ids=(9,))
    scheduler.add(seq)
    assert seq.masked_token_ids() == (EOS, 9)
    _, finished = run_step(scheduler, token_id=9)  # below min_new_tokens: not a stop
    assert not finished
    _, finished = run_step(scheduler, token_id=9)
    assert finished == [seq]
    assert seq.finish.reason is FinishReason.STOP_SEQUENCE and seq.finish.stop_token_id == 9
    assert seq.masked_token_ids() == ()


def test_max_new_tokens_and_context_limit() -> None:
    scheduler = Scheduler(max_batch_size=2, max_seq_len=10, max_num_batched_tokens=16)
    by_count, by_context = make_seq("count", 3, max_new_tokens=3), make_seq("context", 6)
    scheduler.add(by_count)
    scheduler.add(by_context)
    reasons = {}
    while scheduler.has_work():
        _, finished = run_step(scheduler)
        reasons.update({seq.request_id: seq.finish.reason for seq in finished})
    assert reasons == {"count": FinishReason.MAX_NEW_TOKENS, "context": FinishReason.CONTEXT_LIMIT}
    assert len(by_count.output_ids) == 3
    assert by_context.num_tokens == 10


def test_time_limit_and_deadline() -> None:
    scheduler = Scheduler(max_batch_size=4, max_seq_len=512, max_num_batched_tokens=16)
    timed = make_seq("timed", max_generation_time=5.0)
    late = make_seq("late", deadline=3.0)
    scheduler.add(timed)
    scheduler.add(late)
    run_step(scheduler, now=1.0)
    batch, _ = run_step(scheduler, now=3.0)
    assert batch.retired == [late] and late.finish.reason is FinishReason.CANCELLED
    assert late.slot is None
    batch, _ = run_step(scheduler, now=5.5)
    assert batch.retired == [timed] and timed.finish.reason is FinishReason.TIME_LIMIT
    assert len(timed.output_ids) == 2  # the output so far is kept
    assert not scheduler.has_work()


def test_cancel_waiting_and_running_frees_slots_at_next_step() -> None:
    scheduler = Scheduler(max_batch_size=1, max_seq_len=512, max_num_batched_tokens=16)
    running, waiting = make_seq("running"), make_seq("waiting")
    scheduler.add(running)
    scheduler.add(waiting)
    run_step(scheduler)
    scheduler.cancel(["running", "waiting", "unknown"])
    assert running.slot == 0  # still held until the next step
    scheduler.add(replacement := make_seq("next"))
    batch, _ = run_step(scheduler)
    assert batch.retired == [running, waiting]
    assert all(seq.finish.reason is FinishReason.CANCELLED for seq in batch.retired)
    assert replacement.slot == 0 and chunk_sizes(batch) == {"next": 4}


def test_abort_removes_without_finish() -> None:
    scheduler = Scheduler(max_batch_size=1, max_seq_len=512, max_num_batched_tokens=16)
    seq = make_seq("a")
    scheduler.add(seq)
    scheduler.schedule(0.0)
    scheduler.abort(seq)
    assert not scheduler.has_work() and seq.finish is None and scheduler.num_running == 0
    scheduler.add(make_seq("a"))  # the id is free again
    assert scheduler.requests["a"] is not seq


def test_finish_timings() -> None:
    scheduler = Scheduler(max_batch_size=1, max_seq_len=512, max_num_batched_tokens=16)
    seq = make_seq("a", 20, arrival_time=1.0, max_new_tokens=2)
    scheduler.add(seq)
    run_step(scheduler, now=2.0)  # first chunk of 16
    run_step(scheduler, now=2.5)  # last chunk: first token
    run_step(scheduler, now=4.0)  # second token: done
    assert seq.finish.reason is FinishReason.MAX_NEW_TOKENS
    assert (seq.finish.queue_time, seq.finish.prefill_time, seq.finish.decode_time) == (1.0, 0.5, 1.5)


def test_scheduler_imports_no_torch() -> None:
    code = "import sys, workers.engine.scheduler; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_entry_imports_no_torch() -> None:
    code = "import sys, workers.process.entry; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
