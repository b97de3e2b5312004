"""The paged cache's bookkeeping without torch: the block pool, prefix matching and eviction, block tables,
admission by blocks, and preemption in the scheduler."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.workers.test_scheduler import make_seq, run_step
from workers.engine.scheduler import Scheduler
from workers.engine.sequence import ImageSpan, SequenceStatus
from workers.kv.blocks import SCRATCH_BLOCK, BlockPool, chain_hash, prefix_hashes
from workers.protocol import Priority


def test_the_pool_hands_out_every_block_but_scratch_once() -> None:
    pool = BlockPool(num_blocks=5, block_size=4)
    blocks = [pool.allocate() for _ in range(4)]
    assert sorted(blocks) == [1, 2, 3, 4] and SCRATCH_BLOCK not in blocks
    assert (pool.num_free, pool.num_used) == (0, 4)
    with pytest.raises(RuntimeError, match="no free KV block"):
        pool.allocate()
    pool.release(blocks[:2])
    assert (pool.num_free, pool.num_used) == (2, 2)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        BlockPool(num_blocks=1, block_size=4)


def test_chain_hashes_name_the_whole_prefix() -> None:
    tokens = tuple(range(12))
    hashes = prefix_hashes(tokens, block_size=4, num_blocks=3)
    assert hashes[1] == chain_hash(chain_hash(b"", tokens[:4]), tokens[4:8])
    # The same block of tokens after a different first block is a different prefix.
    assert prefix_hashes((99, *tokens[1:]), 4, 3)[1] != hashes[1]
    assert len(set(hashes)) == 3


def test_prefix_matching_stops_at_the_first_miss_and_shares_by_reference() -> None:
    pool = BlockPool(num_blocks=8, block_size=4)
    hashes = prefix_hashes(tuple(range(12)), 4, 3)
    owned = [pool.allocate() for _ in range(3)]
    pool.register(owned[0], hashes[0])
    pool.register(owned[2], hashes[2])  # cached, but after a miss: not part of the match
    assert pool.match_prefix(hashes) == owned[:1]
    pool.take(owned[:1])
    assert pool.ref_count(owned[0]) == 2  # shared: its first owner and the new request
    pool.release(owned[:1])
    assert pool.ref_count(owned[0]) == 1 and pool.num_used == 3


def test_unreferenced_cached_blocks_are_evicted_least_recently_released_first() -> None:
    pool = BlockPool(num_blocks=4, block_size=2)
    a, b, c = (pool.allocate() for _ in range(3))
    for block, token in ((a, 1), (b, 2), (c, 3)):
        pool.register(block, chain_hash(b"", (token, token)))
    pool.release([a])
    pool.release([c])
    pool.release([b])
    assert (pool.num_free, pool.num_cached) == (3, 3)  # evictable blocks count as free and stay matchable
    assert pool.match_prefix([chain_hash(b"", (3, 3))]) == [c]
    pool.take([c])  # in use again: no longer evictable
    assert pool.num_free == 2
    assert pool.allocate() == a  # released first, evicted first
    assert pool.match_prefix([chain_hash(b"", (1, 1))]) == []  # its hash went with it
    assert pool.allocate() == b and pool.num_free == 0


def test_a_duplicate_block_stays_private_and_caching_can_be_off() -> None:
    pool = BlockPool(num_blocks=4, block_size=2)
    first, second = pool.allocate(), pool.allocate()
    key = chain_hash(b"", (5, 6))
    pool.register(first, key)
    pool.register(second, key)
    assert pool.match_prefix([key]) == [first]
    pool.release([second])
    assert pool.num_cached == 1
    off = BlockPool(num_blocks=4, block_size=2, enable_prefix_caching=False)
    off.register(off.allocate(), key)
    assert off.match_prefix([key]) == [] and off.num_cached == 0


def test_block_tables_grow_with_the_tokens_not_the_context() -> None:
    scheduler = Scheduler(max_batch_size=4, max_seq_len=64, max_num_batched_tokens=16, pool=BlockPool(20, 4))
    seq = make_seq("a", 6)
    scheduler.add(seq)
    run_step(scheduler)
    assert len(seq.block_table) == 2  # 6 prompt tokens in blocks of 4
    for _ in range(2):
        run_step(scheduler)  # K/V of 7, then 8 tokens
    assert len(seq.block_table) == 2 and seq.num_computed_tokens == 8
    run_step(scheduler)
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3
    scheduler.cancel(["a"])
    run_step(scheduler)
    assert scheduler.pool.num_used == 0


def test_admission_counts_blocks_so_short_requests_share_a_small_cache() -> None:
    # 12 blocks of 4 = 48 tokens; a slotted cache of max_seq_len 48 would hold one request.
    scheduler = Scheduler(max_batch_size=8, max_seq_len=48, max_num_batched_tokens=64, pool=BlockPool(13, 4))
    seqs = [make_seq(f"r{i}", 5) for i in range(8)]
    for seq in seqs:
        scheduler.add(seq)
    run_step(scheduler)
    assert scheduler.num_running == 6  # 2 blocks each; the 7th would need 2 of the 0 left
    assert all(seq.status is SequenceStatus.WAITING for seq in seqs[6:])


def test_a_full_cache_preempts_the_latest_lowest_priority_and_it_resumes_its_tokens() -> None:
    scheduler = Scheduler(max_batch_size=4, max_seq_len=24, max_num_batched_tokens=32, pool=BlockPool(7, 4))
    high = make_seq("high", 8, priority=Priority.HIGH)
    early, late = make_seq("early", 8), make_seq("late", 8)
    for seq in (early, high, late):
        scheduler.add(seq)
    run_step(scheduler)  # all three prompts: 6 blocks of 6, the first token of each
    assert scheduler.pool.num_free == 0
    batch, _ = run_step(scheduler, token_id=8)  # each needs a new block for position 8: late goes
    assert late.status is SequenceStatus.WAITING and late.num_preemptions == 1
    assert batch.decodes == [high, early] and scheduler.stats.num_preemptions == 1
    assert (late.num_computed_tokens, late.prefill_target, late.output_ids) == (0, 9, [7])
    scheduler.cancel(["high"])
    batch, _ = run_step(scheduler, token_id=9)
    chunk = next(chunk for chunk in batch.prefills if chunk.seq is late)
    # Readmitted: its first 8 tokens (2 blocks, the same prompt as high's) came from the prefix cache, the rest is
    # recomputed, and its last chunk produces its second token.
    assert (chunk.start, chunk.token_ids, chunk.is_last) == (8, (7,), True)
    assert late.output_ids == [7, 9] and late.num_computed_tokens == 9


def test_a_request_alone_always_fits_and_the_preempted_one_runs_after_it() -> None:
    scheduler = Scheduler(max_batch_size=2, max_seq_len=16, max_num_batched_tokens=32, pool=BlockPool(5, 4))
    first, second = make_seq("first", 7), make_seq("second", 7)
    scheduler.add(first)
    scheduler.add(second)
    run_step(scheduler)
    run_step(scheduler)  # positions 7: both fit in their second block
    batch, _ = run_step(scheduler)  # position 8 needs a third block each: second is preempted for first
    assert batch.decodes == [first] and second.status is SequenceStatus.WAITING
    while first.status is not SequenceStatus.FINISHED:
        run_step(scheduler)  # first reaches the context limit, the whole cache, preempting second as it grows
    assert first.num_tokens == 16 and first.finish.reason.value == "context_limit"
    run_step(scheduler)
    assert second.status is SequenceStatus.RUNNING


def test_blocks_holding_an_image_are_keyed_by_its_content() -> None:
    """Image tokens are one id repeated: prompts that differ only in their image share the blocks before it, not
    the blocks holding its tokens nor any after them; the same image again hits them all."""
    scheduler = Scheduler(max_batch_size=2, max_seq_len=64, max_num_batched_tokens=64, pool=BlockPool(20, 4))
    prompt = (1, 2, 3, 4, 5, 6, *[9] * 8, 7, 8, 9, 10, 11)  # the image's 8 tokens at [6, 14); blocks of 4

    def cached_tokens(request_id: str, content_hash: str) -> int:
        seq = make_seq(request_id, len(prompt), max_new_tokens=1)
        seq.prompt_ids, seq.images = prompt, (ImageSpan(6, 8, content_hash),)
        scheduler.add(seq)
        while scheduler.has_work():
            run_step(scheduler)
        return seq.num_cached_tokens

    assert cached_tokens("first", "a" * 64) == 0
    assert cached_tokens("same image", "a" * 64) == 16  # every full block before the last token
    assert cached_tokens("other image", "b" * 64) == 4  # block [0, 4) only: [4, 8) holds image tokens


def test_the_block_logic_imports_without_torch() -> None:
    code = "import sys, workers.engine.block_tables, workers.engine.scheduler; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_request_aborted_mid_step_releases_its_blocks_and_caches_none() -> None:
    scheduler = Scheduler(max_batch_size=2, max_seq_len=32, max_num_batched_tokens=32, pool=BlockPool(9, 4))
    seq = make_seq("failed", 10)
    scheduler.add(seq)
    batch = scheduler.schedule(0.0)
    scheduler.abort(seq)  # what the engine does when the request's forward ran out of memory
    assert scheduler.postprocess(batch, [], 0.0) == []
    assert (scheduler.pool.num_used, scheduler.pool.num_cached, seq.num_computed_tokens) == (0, 0, 0)
