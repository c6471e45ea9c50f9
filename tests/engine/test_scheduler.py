"""The scheduler alone, vLLM v1 style: a real Scheduler and BlockManager, no model.

Each test adds requests, calls ``schedule()``, feeds back fake sampled tokens the way the
engine does, and asserts exact chunk sizes, block ids, preemption victims and free blocks.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from model.sampling_params import SamplingParams
from serve.engine.block_manager import BlockManager, cdiv
from serve.engine.errors import QueueFullError
from serve.engine.output import finished_status
from serve.engine.request import Request, RequestStatus
from serve.engine.scheduler import Scheduler, SchedulerOutput

BS = 4  # small blocks keep the exact ids readable
MAX_MODEL_LEN = 1024  # never the limit here: requests end on max_tokens


def request(request_id: str, num_prompt_tokens: int, max_tokens: int = 8,
            first_token: int = 0) -> Request:
    """Distinct ``first_token`` per request, so prompts share no block unless a test wants."""
    prompt = list(range(first_token, first_token + num_prompt_tokens))
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Request(request_id, prompt, params, max_tokens, eos_token_id=None)


def make_scheduler(num_blocks: int, max_num_batched_tokens: int, max_num_seqs: int = 8,
                   enable_prefix_caching: bool = True) -> Scheduler:
    manager = BlockManager(num_blocks, BS, enable_prefix_caching)
    return Scheduler(manager, max_num_seqs, max_num_batched_tokens, max_waiting_requests=16)


def step(scheduler: Scheduler) -> SchedulerOutput:
    """``schedule()``, then what ``LLMEngine.step`` does once the runner has answered.

    The engine's update is inline in ``LLMEngine.step`` and ``_process_token`` (which also
    needs a tokenizer for stop strings), so this is the minimal equivalent: advance
    ``num_computed_tokens``, give every chunk that reached the last known token one sampled
    token, and finish on the engine's own ``finished_status``. ``samples`` is read before
    the advance, as ``StepBuilder.build`` reads it to tell the runner what to sample.
    """
    out = scheduler.schedule()
    samples = [item.samples for item in out.scheduled]
    for item, sampled in zip(out.scheduled, samples, strict=True):
        req = item.request
        req.num_computed_tokens += item.num_new_tokens
        if not sampled or req.is_finished:
            continue
        token_id = 1000 + req.num_output_tokens  # fake, but distinct from every prompt token
        req.append_token(token_id)
        status = finished_status(req, token_id, MAX_MODEL_LEN)
        if status is not None:
            req.status = status
            scheduler.finish(req, status)
    return out


def chunks(out: SchedulerOutput) -> list[tuple[str, int, list[int]]]:
    """(request id, tokens computed this step, block table) per scheduled request."""
    return [(item.request.request_id, item.num_new_tokens, item.block_table)
            for item in out.scheduled]


def ids(requests: Iterable[Request]) -> list[str]:
    return [req.request_id for req in requests]


def assert_all_free(scheduler: Scheduler) -> None:
    # Walk the pool rather than trusting a counter (as tests/engine/helpers.py does).
    pool = scheduler.block_manager.pool
    assert [block.block_id for block in pool.blocks if block.ref_cnt != 0] == []
    assert sorted(pool.free_block_ids()) == list(range(pool.num_blocks))
    assert scheduler.block_manager._requests == {}  # no per-request state left behind
    assert scheduler.num_unfinished == 0


def test_chunked_prefill_fills_the_token_budget_exactly() -> None:
    scheduler = make_scheduler(num_blocks=16, max_num_batched_tokens=8)
    a, b, c = request("a", 10, 3), request("b", 6, 3, 100), request("c", 3, 3, 200)
    for req in (a, b, c):
        scheduler.add(req)

    out = step(scheduler)  # 8 of a's 10 tokens: a chunk, so nothing sampled
    assert chunks(out) == [("a", 8, [0, 1])]
    assert out.num_scheduled_tokens == 8 and a.num_output_tokens == 0
    assert ids(scheduler.waiting) == ["b", "c"]

    out = step(scheduler)  # a's last 2 tokens first, then b whole; no budget left for c
    assert chunks(out) == [("a", 2, [0, 1, 2]), ("b", 6, [3, 4])]
    assert (a.num_output_tokens, b.num_output_tokens) == (1, 1)
    assert ids(scheduler.waiting) == ["c"]

    out = step(scheduler)  # the two decodes, then c in the 6 tokens left
    assert chunks(out) == [("a", 1, [0, 1, 2]), ("b", 1, [3, 4]), ("c", 3, [5])]
    assert out.num_scheduled_tokens == 5


def test_decodes_go_first_and_a_long_prompt_takes_what_is_left() -> None:
    scheduler = make_scheduler(num_blocks=16, max_num_batched_tokens=8)
    for i, name in enumerate("abc"):
        scheduler.add(request(name, 2, 8, 100 * i))
    assert chunks(step(scheduler)) == [("a", 2, [0]), ("b", 2, [1]), ("c", 2, [2])]
    d = request("d", 20, 2, 300)
    scheduler.add(d)
    # Each decode costs 1 token; d's prompt is chunked into the 5 left, step after step.
    assert chunks(step(scheduler)) == [("a", 1, [0]), ("b", 1, [1]), ("c", 1, [2]),
                                       ("d", 5, [3, 4])]
    # The decodes' 4th tokens still fit their first blocks; d's 10 tokens take a third.
    assert chunks(step(scheduler)) == [("a", 1, [0]), ("b", 1, [1]), ("c", 1, [2]),
                                       ("d", 5, [3, 4, 5])]
    assert d.num_computed_tokens == 10 and d.num_output_tokens == 0


def test_max_num_seqs_caps_admission_until_a_request_finishes() -> None:
    scheduler = make_scheduler(num_blocks=16, max_num_batched_tokens=64, max_num_seqs=2)
    a, b, c = request("a", 3, 1), request("b", 3, 2, 100), request("c", 3, 2, 200)
    for req in (a, b, c):
        scheduler.add(req)
    assert chunks(step(scheduler)) == [("a", 3, [0]), ("b", 3, [1])]
    assert a.status is RequestStatus.FINISHED_LENGTH  # max_tokens=1: done on its first token
    assert ids(scheduler.waiting) == ["c"]  # budget was left, but no sequence slot
    # a's block held no full block, so it is uncached and reused before never-used ones.
    assert chunks(step(scheduler)) == [("b", 1, [1]), ("c", 3, [0])]


def test_preemption_takes_the_newest_running_request() -> None:
    scheduler = make_scheduler(num_blocks=6, max_num_batched_tokens=64)
    a, b, c = request("a", 7, 8), request("b", 4, 8, 100), request("c", 7, 8, 200)
    for req in (a, b, c):
        scheduler.add(req)
    assert chunks(step(scheduler)) == [("a", 7, [0, 1]), ("b", 4, [2]), ("c", 7, [3, 4])]
    assert chunks(step(scheduler)) == [("a", 1, [0, 1]), ("b", 1, [2, 5]), ("c", 1, [3, 4])]
    assert scheduler.block_manager.num_free_blocks == 0

    # a's 9th token needs a third block: the victim is c, admitted last, not b. c frees
    # its tail first, so a gets c's block 4; b needs no block and still runs after a.
    out = step(scheduler)
    assert ids(out.preempted) == ["c"]
    assert chunks(out) == [("a", 1, [0, 1, 4]), ("b", 1, [2, 5])]
    assert ids(scheduler.running) == ["a", "b"] and ids(scheduler.waiting) == ["c"]
    assert (c.status, c.num_computed_tokens, c.num_preemptions) == (RequestStatus.PREEMPTED,
                                                                     0, 1)
    assert c.output_token_ids == [1000, 1001]  # what it generated is kept and recomputed
    assert scheduler.block_manager.block_table("c") == []
    assert scheduler.block_manager.pool.free_block_ids() == [3]  # c's first block, cached

    # Once a is gone, c comes back on its cached first block and recomputes the rest.
    scheduler.finish(a, RequestStatus.FINISHED_ABORTED)
    out = step(scheduler)
    assert chunks(out) == [("b", 1, [2, 5]), ("c", 5, [3, 4, 1])]
    assert c.num_computed_tokens == 9 and c.status is RequestStatus.RUNNING
    assert c.num_cached_tokens == 0  # the hit at its first scheduling, not this one


def test_nothing_is_admitted_in_a_step_that_preempts() -> None:
    # Without the prefix cache a re-admitted request needs blocks only for its first chunk,
    # so here the victim would fit right back in the same step; it must wait one step.
    scheduler = make_scheduler(num_blocks=5, max_num_batched_tokens=6,
                               enable_prefix_caching=False)
    a, b = request("a", 7, 20), request("b", 9, 20, 100)
    scheduler.add(a)
    scheduler.add(b)
    assert chunks(step(scheduler)) == [("a", 6, [0, 1])]
    assert chunks(step(scheduler)) == [("a", 1, [0, 1]), ("b", 5, [2, 3])]
    assert chunks(step(scheduler)) == [("a", 1, [0, 1]), ("b", 4, [2, 3, 4])]

    out = step(scheduler)  # a's 9th token needs a block: b is preempted
    assert ids(out.preempted) == ["b"]
    assert chunks(out) == [("a", 1, [0, 1, 4])]
    budget_left = scheduler.max_num_batched_tokens - out.num_scheduled_tokens
    first_chunk = min(b.num_tokens, budget_left)
    assert (budget_left, first_chunk) == (5, 5)
    assert scheduler.block_manager.num_free_blocks == cdiv(first_chunk, BS) == 2
    assert ids(scheduler.waiting) == ["b"] and b.status is RequestStatus.PREEMPTED

    # The next step admits it, into exactly the blocks it freed.
    assert chunks(step(scheduler)) == [("a", 1, [0, 1, 4]), ("b", 5, [3, 2])]


def test_a_request_that_cannot_grow_preempts_itself_when_it_is_the_newest() -> None:
    scheduler = make_scheduler(num_blocks=3, max_num_batched_tokens=64)
    a, b = request("a", 6, 8), request("b", 3, 8, 100)
    scheduler.add(a)
    scheduler.add(b)
    assert chunks(step(scheduler)) == [("a", 6, [0, 1]), ("b", 3, [2])]
    assert chunks(step(scheduler)) == [("a", 1, [0, 1]), ("b", 1, [2])]
    out = step(scheduler)  # b's 5th token needs a block and b is the newest: b itself goes
    assert chunks(out) == [("a", 1, [0, 1])]
    assert ids(out.preempted) == ["b"] and ids(scheduler.waiting) == ["b"]
    assert scheduler.block_manager.pool.free_block_ids() == [2]


def test_every_block_is_free_after_all_finish_or_abort() -> None:
    scheduler = make_scheduler(num_blocks=6, max_num_batched_tokens=8, max_num_seqs=4)
    requests = {req.request_id: req for req in (
        request("a", 7, 6), request("b", 5, 6, 100), request("c", 6, 6, 200),
        request("d", 3, 4, 300), request("e", 9, 3, 400))}
    for req in requests.values():
        scheduler.add(req)
    num_steps = 0
    preempted: list[str] = []
    while scheduler.num_unfinished:
        num_steps += 1
        if num_steps == 3:  # b is running, e has never been scheduled
            scheduler.finish(requests["b"], RequestStatus.FINISHED_ABORTED)
            scheduler.finish(requests["e"], RequestStatus.FINISHED_ABORTED)
        preempted += ids(step(scheduler).preempted)
        assert num_steps < 50, "the scheduler stopped making progress"
    assert preempted == ["d"]  # d, the newest, preempted itself once on the way
    assert {rid: req.finish_reason for rid, req in requests.items()} == {
        "a": "length", "b": "abort", "c": "length", "d": "length", "e": "abort"}
    assert_all_free(scheduler)


def test_aborting_a_preempted_request_twice_is_harmless() -> None:
    scheduler = make_scheduler(num_blocks=3, max_num_batched_tokens=64)
    a, b = request("a", 6, 8), request("b", 3, 8, 100)
    scheduler.add(a)
    scheduler.add(b)
    for _ in range(3):
        step(scheduler)
    assert b.status is RequestStatus.PREEMPTED
    scheduler.finish(b, RequestStatus.FINISHED_ABORTED)
    scheduler.finish(b, RequestStatus.FINISHED_ABORTED)  # idempotent
    scheduler.finish(a, RequestStatus.FINISHED_ABORTED)
    assert (a.finish_reason, b.finish_reason) == ("abort", "abort")
    assert_all_free(scheduler)


def test_finish_keeps_the_status_the_engine_already_set() -> None:
    scheduler = make_scheduler(num_blocks=4, max_num_batched_tokens=64)
    a = request("a", 3, 1)
    scheduler.add(a)
    step(scheduler)  # finished on length by the step
    scheduler.finish(a, RequestStatus.FINISHED_ABORTED)  # a late abort changes nothing
    assert a.status is RequestStatus.FINISHED_LENGTH
    assert_all_free(scheduler)


def test_the_waiting_queue_is_bounded() -> None:
    scheduler = Scheduler(BlockManager(4, BS), max_num_seqs=1, max_num_batched_tokens=8,
                          max_waiting_requests=2)
    # One running slot is free, so three fit before any step: one to run, two to wait.
    for name, first in (("a", 0), ("b", 100), ("c", 200)):
        scheduler.add(request(name, 3, first_token=first))
    with pytest.raises(QueueFullError, match="waiting queue is full"):
        scheduler.add(request("d", 3, first_token=300))
    step(scheduler)  # "a" runs: the slot is taken, the two waiting fill the queue
    with pytest.raises(QueueFullError, match="waiting queue is full"):
        scheduler.add(request("e", 3, first_token=400))
