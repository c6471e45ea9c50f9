"""The KV host tier in the block manager: exact host blocks, copies, events and LRU order."""

from __future__ import annotations

import random

import pytest

from model.step import BlockCopies
from serve.engine.block_hash import hash_prompt_blocks
from serve.engine.block_manager import BlockManager
from serve.engine.host_pool import HostBlockPool
from serve.engine.kv_events import HOST, AllBlocksCleared, BlockRemoved, BlockStored
from tests.engine.helpers import prefill as schedule_prompt
from tests.engine.helpers import tokens
from tests.engine.tier_checks import assert_tiers_consistent

BS = 4


def prefill(m: BlockManager, rid: str, prompt: list[int], salt: str | None = None) -> list[int]:
    table = schedule_prompt(m, rid, prompt, salt)
    assert_tiers_consistent(m)
    return table


def test_host_pool_hands_out_low_ids_and_drops_the_oldest_key() -> None:
    pool = HostBlockPool(3)
    k1, k2, k3, k4 = (bytes([i]) * 16 for i in range(1, 5))
    assert pool.put([k1, k2]) == ([(k1, 0), (k2, 1)], [])
    assert pool.take(k1) == 0
    # Block 0 is read by this step's restore: k2, the oldest key, makes room instead.
    assert pool.put([k3, k4]) == ([(k3, 2), (k4, 1)], [k2])
    pool.check()
    assert pool.num_free_blocks == 0
    pool.end_step()
    assert pool.num_free_blocks == 1
    assert pool.discard(k3) and not pool.discard(k3)
    assert pool.keys() == [k4]
    with pytest.raises(ValueError, match="twice"):
        pool.put([k4])
    pool.reset()
    pool.check()
    assert len(pool) == 0 and pool.num_free_blocks == 3


def test_eviction_moves_keys_to_host_and_a_hit_restores_them() -> None:
    m = BlockManager(num_blocks=4, block_size=BS, num_host_blocks=4)
    prompt_a = tokens(0, 9)
    ha = hash_prompt_blocks(prompt_a, BS)
    assert prefill(m, "a", prompt_a) == [0, 1, 2]
    m.free("a")
    assert m.pool.free_block_ids() == [2, 3, 1, 0]
    m.drain_events()
    assert m.drain_copies() is None

    # b needs every block: a's tail (1) then head (0) leave the device for host 0 and 1.
    prompt_b = tokens(100, 13)
    hb = hash_prompt_blocks(prompt_b, BS)
    assert prefill(m, "b", prompt_b) == [2, 3, 1, 0]
    assert m.drain_events() == [BlockStored([ha[1], ha[0]], None, 8, HOST),
                                BlockStored(hb[:3], None, 12)]
    assert m.drain_copies() == BlockCopies(offload=[(1, 0), (0, 1)])
    m.free("b")
    assert m.pool.free_block_ids() == [0, 1, 3, 2]

    # c's prompt is a's: both blocks are on the host, restored into fresh blocks 0 and 1
    # (1 held b's third block, which moves to host 2); its last token needs block 3.
    assert m.get_computed_blocks("c", prompt_a) == ([None, None], 8)
    assert m.allocate_slots("c", prompt_a, 8, 1, [None, None]) == [0, 1, 3]
    assert_tiers_consistent(m)
    assert m.drain_events() == [BlockStored([hb[2]], None, 4, HOST),
                                BlockStored([ha[0], ha[1]], None, 8),
                                BlockStored([hb[1]], None, 4, HOST)]
    assert m.drain_copies() == BlockCopies(offload=[(1, 2), (3, 3)], restore=[(1, 0), (0, 1)])
    assert [m.pool.blocks[i].block_hash for i in (0, 1)] == ha
    assert m.pool.host.keys() == [hb[2], hb[1]]
    assert m.hits.num_host_hit_tokens == 8 and m.hits.num_device_hit_tokens == 0
    m.free("c")
    assert_tiers_consistent(m)


def test_device_and_host_hits_interleave_in_sequence_order() -> None:
    m = BlockManager(num_blocks=6, block_size=BS, num_host_blocks=8)
    prompt = tokens(0, 13)
    h = hash_prompt_blocks(prompt, BS)
    assert prefill(m, "a", prompt) == [0, 1, 2, 3]
    m.free("a")  # free queue: [3, 4, 5, 2, 1, 0]
    # x holds a's head (block 0) while y evicts the rest.
    assert prefill(m, "x", prompt[:5]) == [0, 3]
    assert prefill(m, "y", tokens(500, 16)) == [4, 5, 2, 1]
    m.free("y")
    m.free("x")
    m.drain_copies()
    assert m.get_computed_blocks("b", prompt) == ([0, None, None], 12)
    table = m.allocate_slots("b", prompt, 12, 1, [0, None, None])
    assert table is not None and table[0] == 0 and len(table) == 4
    assert [m.pool.blocks[i].block_hash for i in table[:3]] == h
    copies = m.drain_copies()
    assert copies is not None and [device for _, device in copies.restore] == table[1:3]
    m.free("b")
    assert_tiers_consistent(m)


def test_recomputing_a_host_key_on_the_device_drops_the_host_copy() -> None:
    m = BlockManager(num_blocks=3, block_size=BS, num_host_blocks=4)
    prompt = tokens(0, 9)
    h = hash_prompt_blocks(prompt, BS)
    prefill(m, "a", prompt)
    m.free("a")
    prefill(m, "b", tokens(100, 12))  # evicts both of a's keys to the host
    m.free("b")
    m.drain_events()
    # An 8-token prompt hits at most its first block: block 1 (key h[1]) is computed again.
    assert m.get_computed_blocks("c", prompt[:8]) == ([None], 4)
    prefill(m, "c", prompt[:8])
    events = m.drain_events()
    assert BlockStored([h[0]], None, 4) in events
    assert BlockStored([h[1]], h[0], 4) in events
    assert h[1] not in m.pool.host and h[0] not in m.pool.host
    m.free("c")


def test_a_full_host_tier_drops_its_oldest_keys() -> None:
    m = BlockManager(num_blocks=2, block_size=BS, num_host_blocks=3)
    first, second = tokens(0, 5), tokens(100, 5)
    k_first, k_second = hash_prompt_blocks(first, BS)[0], hash_prompt_blocks(second, BS)[0]
    for rid, prompt in (("a", first), ("b", second), ("c", tokens(200, 8))):
        prefill(m, rid, prompt)
        m.free(rid)
    m.drain_events()
    assert m.pool.host.keys() == [k_first, k_second]
    assert m.drain_copies() == BlockCopies(offload=[(0, 0), (1, 1)])
    prefill(m, "d", tokens(300, 8))  # c's two keys go to the host; first's makes room
    kc = hash_prompt_blocks(tokens(200, 8), BS)
    assert m.drain_events()[:2] == [BlockRemoved([k_first], HOST),
                                    BlockStored([kc[1], kc[0]], None, 8, HOST)]
    assert m.pool.host.keys() == [k_second, kc[1], kc[0]]
    assert m.drain_copies() == BlockCopies(offload=[(1, 2), (0, 0)])
    assert m.pool.counters.num_host_dropped == 1
    m.free("d")
    assert_tiers_consistent(m)


def test_keys_the_host_cannot_take_this_step_go_nowhere() -> None:
    """Both host blocks are read by this step's restores: the keys evicted to make room for
    them have nowhere to go and are removed."""
    m = BlockManager(num_blocks=3, block_size=BS, num_host_blocks=2)
    prompt = tokens(0, 9)
    h = hash_prompt_blocks(prompt, BS)
    prefill(m, "a", prompt)
    m.free("a")
    other = tokens(100, 12)
    prefill(m, "b", other)  # a's keys to host 0 and 1
    m.free("b")
    m.drain_events()
    m.drain_copies()
    hb = hash_prompt_blocks(other, BS)  # on blocks 2, 1, 0
    assert m.pool.free_block_ids() == [0, 1, 2]
    assert prefill(m, "c", prompt) == [0, 1, 2]
    assert m.drain_events() == [BlockRemoved([hb[2], hb[1]]), BlockStored(h, None, 8),
                                BlockRemoved([hb[0]])]
    assert m.drain_copies() == BlockCopies(restore=[(1, 0), (0, 1)])
    m.free("c")
    assert_tiers_consistent(m)


def test_cache_salts_separate_tenants_in_the_host_tier() -> None:
    m = BlockManager(num_blocks=3, block_size=BS, num_host_blocks=8)
    prompt = tokens(0, 9)
    prefill(m, "a", prompt, salt="tenant-a")
    m.free("a")
    prefill(m, "b", tokens(100, 12))
    m.free("b")
    assert len(m.pool.host) == 2
    assert m.get_computed_blocks("other", prompt, "tenant-b") == ([], 0)
    assert m.get_computed_blocks("none", prompt) == ([], 0)
    assert m.get_computed_blocks("same", prompt, "tenant-a") == ([None, None], 8)
    for rid in ("other", "none", "same"):
        m.free(rid)


def test_reset_forgets_both_tiers_and_pending_copies() -> None:
    m = BlockManager(num_blocks=3, block_size=BS, num_host_blocks=8)
    prefill(m, "a", tokens(0, 9))
    m.free("a")
    prefill(m, "b", tokens(100, 12))
    assert not m.reset_prefix_cache()  # b holds blocks
    m.free("b")
    assert m.reset_prefix_cache()
    assert m.drain_events()[-1] == AllBlocksCleared()
    assert m.drain_copies() is None
    assert len(m.pool.host) == 0 and m.num_cached_blocks == 0
    assert m.get_computed_blocks("c", tokens(0, 9)) == ([], 0)
    m.free("c")
    assert_tiers_consistent(m)


def test_a_big_host_tier_hits_like_an_unbounded_device_pool() -> None:
    """Random multi-turn chats: with room on the host for everything, every prompt hits as
    much as it would on a device pool that never evicts; without a tier it hits less."""
    rng = random.Random(3)
    small = BlockManager(num_blocks=12, block_size=BS, num_host_blocks=512)
    bare = BlockManager(num_blocks=12, block_size=BS)
    unbounded = BlockManager(num_blocks=512, block_size=BS)
    chats: list[list[int]] = [[] for _ in range(6)]
    hits = {"small": 0, "bare": 0, "unbounded": 0}
    for turn in range(120):
        chat = chats[rng.randrange(len(chats))]
        chat += [rng.randrange(1000) for _ in range(rng.randrange(2, 9))]
        if len(chat) > 40:
            chat[:] = chat[-6:]
        for name, m in (("small", small), ("bare", bare), ("unbounded", unbounded)):
            hit_ids, num_computed = m.get_computed_blocks(f"t{turn}", chat)
            table = m.allocate_slots(f"t{turn}", chat, num_computed, len(chat) - num_computed,
                                     hit_ids)
            assert table is not None
            m.drain_copies()
            hits[name] += num_computed
            m.free(f"t{turn}")
            assert_tiers_consistent(m)
    assert hits["small"] == hits["unbounded"] > hits["bare"]
    assert small.hits.num_device_hit_tokens + small.hits.num_host_hit_tokens == hits["small"]
    assert small.hits.num_host_hit_tokens > 0


def test_resync_events_name_each_key_with_its_tier() -> None:
    m = BlockManager(num_blocks=3, block_size=BS, num_host_blocks=8)
    prompt_a, prompt_b = tokens(0, 9), tokens(100, 9)
    ha, hb = hash_prompt_blocks(prompt_a, BS), hash_prompt_blocks(prompt_b, BS)
    prefill(m, "a", prompt_a)
    m.free("a")
    prefill(m, "b", prompt_b)  # takes every block: a's keys go to the host, tail first
    m.free("b")
    assert m.pool.resync_events() == [BlockStored(hb, None, 8),
                                      BlockStored([ha[1], ha[0]], None, 8, HOST)]
    assert BlockManager(num_blocks=3, block_size=BS).pool.resync_events() == []
