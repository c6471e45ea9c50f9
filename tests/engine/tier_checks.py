"""Invariants of the two KV tiers, checked by walking the structures themselves."""

from __future__ import annotations

from serve.engine.block_manager import BlockManager
from serve.engine.engine import LLMEngine


def assert_tiers_consistent(manager: BlockManager) -> None:
    """Every device block is in use or free (never both), every cached key names its block,
    every host block is held, free or being read, once; and a key lives in one tier only."""
    pool = manager.pool
    free = pool.free_block_ids()
    assert len(set(free)) == len(free), "a block is in the free queue twice"
    free_set = set(free)
    device_keys = []
    for block in pool.blocks:
        assert block.ref_cnt >= 0
        assert (block.ref_cnt == 0) == (block.block_id in free_set), block
        if block.block_hash is not None:
            assert pool.get_cached_block(block.block_hash) is block
            device_keys.append(block.block_hash)
    assert sorted(device_keys) == sorted(pool.cached_hashes())
    host = pool.host
    if host is None:
        return
    host.check()
    host_keys = host.keys()
    assert len(set(host_keys)) == len(host_keys), "a key held twice in the host tier"
    both = set(device_keys) & set(host_keys)
    assert not both, f"{len(both)} keys on the device and the host at once"


def assert_engine_idle(engine: LLMEngine) -> None:
    """Nothing runs or waits, every device block is free, the tiers are consistent."""
    assert engine.scheduler.num_unfinished == 0
    assert engine.requests == {}
    pool = engine.block_manager.pool
    assert [b.block_id for b in pool.blocks if b.ref_cnt] == []
    assert sorted(pool.free_block_ids()) == list(range(pool.num_blocks))
    assert_tiers_consistent(engine.block_manager)


def step_checked(engine: LLMEngine) -> list:
    """One engine step, then the invariants."""
    outputs = engine.step()
    assert_tiers_consistent(engine.block_manager)
    return outputs
