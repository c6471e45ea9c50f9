"""Assertions shared by the engine tests."""

from __future__ import annotations

from serve.engine.block_manager import BlockManager
from serve.engine.engine import LLMEngine


def tokens(start: int, count: int) -> list[int]:
    return list(range(start, start + count))


def prefill(m: BlockManager, rid: str, prompt: list[int], salt: str | None = None) -> list[int]:
    """Schedule a whole prompt the way the scheduler does; fail the test if it does not fit."""
    hit_ids, num_computed = m.get_computed_blocks(rid, prompt, salt)
    table = m.allocate_slots(rid, prompt, num_computed, len(prompt) - num_computed, hit_ids, salt)
    assert table is not None
    return table


def assert_all_blocks_free(engine: LLMEngine) -> None:
    """Walk the pool itself rather than trusting a counter the engine also maintains."""
    pool = engine.block_manager.pool
    held = [block.block_id for block in pool.blocks if block.ref_cnt != 0]
    assert held == [], f"blocks still referenced: {held}"
    assert sorted(pool.free_block_ids()) == list(range(len(pool.blocks)))
    assert engine.scheduler.num_unfinished == 0
    assert engine.requests == {}
