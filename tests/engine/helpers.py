"""Assertions shared by the engine tests."""

from __future__ import annotations

from serve.engine.engine import LLMEngine


def assert_all_blocks_free(engine: LLMEngine) -> None:
    """Walk the pool itself rather than trusting a counter the engine also maintains."""
    pool = engine.block_manager.pool
    held = [block.block_id for block in pool.blocks if block.ref_cnt != 0]
    assert held == [], f"blocks still referenced: {held}"
    assert sorted(pool.free_block_ids()) == list(range(len(pool.blocks)))
    assert engine.scheduler.num_unfinished == 0
    assert engine.requests == {}
