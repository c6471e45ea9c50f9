"""Block accounting with the KV host tier: after finishes, aborts, preemptions and a failed
step every device block is free again, and the host tier never holds a key twice or a key
the device also holds (checked after every step)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.sampling_params import SamplingParams
from serve import LLM
from serve.engine.block_hash import hash_prompt_blocks
from tests.engine.conversations import user_turns
from tests.engine.tier_checks import assert_engine_idle, step_checked

TINY_BLOCK_BYTES = 8192


def run_until_done(engine, abort_at: dict[int, str] | None = None) -> dict[str, str | None]:
    reasons: dict[str, str | None] = {}
    steps = 0
    while engine.has_unfinished_requests():
        for output in step_checked(engine):
            if output.finished:
                reasons[output.request_id] = output.outputs[0].finish_reason
        steps += 1
        if abort_at and steps in abort_at:
            engine.abort(abort_at[steps])
    return reasons


@pytest.fixture
def llm(long_checkpoint: Path):
    # 24 device blocks (384 tokens) for five requests of ~130 tokens each: preemption.
    llm = LLM(str(long_checkpoint), num_kv_blocks=24, kv_host_memory=64 * TINY_BLOCK_BYTES,
              dtype="float32", max_num_batched_tokens=64)
    yield llm
    llm.shutdown()


def test_finish_abort_preemption_and_a_failed_step_return_every_block(llm: LLM) -> None:
    engine = llm.engine
    prompts = [turns[0] for turns in user_turns(num_conversations=6, num_turns=1,
                                                turn_len=90, seed=5)]
    long = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    engine.add_request("finish", prompts[0], SamplingParams(temperature=0.0, max_tokens=3))
    engine.add_request("abort-running", prompts[1], long)
    engine.add_request("abort-waiting", prompts[2], long)
    for i in (3, 4, 5):
        engine.add_request(f"long-{i}", prompts[i], long)
    requests = dict(engine.requests)
    engine.abort("abort-waiting")
    reasons = run_until_done(engine, abort_at={4: "abort-running"})
    assert reasons == {"finish": "length", "abort-running": "abort", "abort-waiting": "abort",
                       "long-3": "length", "long-4": "length", "long-5": "length"}
    assert sum(r.num_preemptions for r in requests.values()) > 0
    assert engine.stats().num_offloaded_blocks > 0
    assert_engine_idle(engine)

    # Prompts seen before come back from the host; one is aborted mid-prefill (its chunk
    # budget is 64 tokens), right after the step that restored its prefix.
    host = engine.block_manager.pool.host
    on_host = [p for p in prompts if hash_prompt_blocks(p, 16)[0] in host]
    assert len(on_host) >= 2
    again = [on_host[0] + [7] * 100, on_host[1] + [9] * 40]
    engine.add_request("again-aborted", again[0], long)
    engine.add_request("again", again[1], SamplingParams(temperature=0.0, max_tokens=4))
    step_checked(engine)
    assert engine.stats().num_restored_blocks > 0
    assert engine.requests["again-aborted"].num_computed_tokens < len(again[0])
    engine.abort("again-aborted")
    assert run_until_done(engine) == {"again": "length", "again-aborted": "abort"}
    assert_engine_idle(engine)

    # A step that restores blocks fails: every request fails, every block is free and
    # both tiers are empty (what the failed step wrote cannot be trusted).
    on_host = [p for p in prompts if hash_prompt_blocks(p, 16)[0] in host]
    engine.add_request("fails", on_host[0], long)
    failed_steps = []

    def broken(step):
        failed_steps.append(step)
        raise RuntimeError("device lost")

    engine.executor.execute = broken
    outputs = step_checked(engine)
    assert [(o.request_id, o.outputs[0].finish_reason) for o in outputs] == [("fails", "error")]
    assert failed_steps[0].copies is not None and failed_steps[0].copies.restore
    assert_engine_idle(engine)
    stats = engine.stats()
    assert stats.num_free_host_kv_blocks == stats.num_host_kv_blocks == 64
    assert stats.num_cached_blocks == 0
