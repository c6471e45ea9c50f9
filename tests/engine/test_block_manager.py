"""Paged KV block manager and prefix cache: exact block ids, eviction order, events, leaks."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from serve.engine.block_hash import hash_prompt_blocks
from serve.engine.block_manager import BlockManager, cdiv
from serve.engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from tests.engine.helpers import prefill, tokens

BS = 4  # small blocks keep the exact ids readable


def ref_cnts(m: BlockManager) -> list[int]:
    return [block.ref_cnt for block in m.pool.blocks]


def snapshot(m: BlockManager) -> tuple:
    return (
        ref_cnts(m),
        [block.block_hash for block in m.pool.blocks],
        m.pool.free_block_ids(),
        m.num_free_blocks,
        m.num_cached_blocks,
        len(m.pool._events),
    )


def assert_all_free(m: BlockManager) -> None:
    # Walk the pool rather than trusting a counter.
    assert all(block.ref_cnt == 0 for block in m.pool.blocks)
    assert sorted(m.pool.free_block_ids()) == list(range(m.num_blocks))
    assert m.num_free_blocks == m.num_blocks
    assert m.usage == 0.0


def test_fresh_pool_allocates_in_id_order() -> None:
    m = BlockManager(num_blocks=10, block_size=BS)
    assert prefill(m, "a", tokens(0, 10)) == [0, 1, 2]  # 10 tokens: 2 full blocks + 2 slots
    assert prefill(m, "b", tokens(100, 5)) == [3, 4]
    assert m.block_table("a") == [0, 1, 2]
    assert m.num_free_blocks == 5
    assert m.usage == pytest.approx(0.5)
    assert ref_cnts(m) == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert m.num_cached_blocks == 3  # a's blocks 0, 1 and b's block 3
    assert m.can_allocate(5) and not m.can_allocate(6)
    m.free("a")
    m.free("b")
    assert_all_free(m)


def test_shared_prefix_hits_same_blocks_and_shares_references() -> None:
    m = BlockManager(num_blocks=10, block_size=BS)
    prompt_a = tokens(0, 10)
    assert prefill(m, "a", prompt_a) == [0, 1, 2]
    prompt_b = prompt_a[:8] + [500, 501, 502]
    assert m.get_computed_blocks("b", prompt_b) == ([0, 1], 8)
    assert ref_cnts(m)[:3] == [1, 1, 1]  # a lookup takes no reference
    assert m.allocate_slots("b", prompt_b, 8, 3, [0, 1]) == [0, 1, 3]
    assert ref_cnts(m)[:4] == [2, 2, 1, 1]
    m.free("a")
    assert ref_cnts(m)[:4] == [1, 1, 0, 1]
    assert m.pool.free_block_ids()[0] == 2  # a's partial block, uncached: reused first
    m.free("b")
    assert_all_free(m)


def test_hit_never_covers_the_last_prompt_token() -> None:
    m = BlockManager(num_blocks=10, block_size=BS)
    prompt = tokens(0, 8)  # exactly 2 full blocks
    assert prefill(m, "a", prompt) == [0, 1]
    assert m.num_cached_blocks == 2
    m.drain_events()
    # Same 8 tokens: only 1 block may hit, the second must be computed for its logits.
    assert m.get_computed_blocks("b", prompt) == ([0], 4)
    assert m.allocate_slots("b", prompt, 4, 4, [0]) == [0, 2]
    # Block 2 holds the same content as block 1, which stays the cached copy.
    assert m.pool.blocks[2].block_hash is None
    assert m.num_cached_blocks == 2
    assert m.drain_events() == []
    # One more token and both full blocks hit.
    assert m.get_computed_blocks("c", prompt + [99]) == ([0, 1], 8)
    assert m.get_computed_blocks("d", prompt[:4]) == ([], 0)
    for rid in "abcd":
        m.free(rid)
    assert_all_free(m)


def test_freed_cached_blocks_stay_hits_until_evicted() -> None:
    m = BlockManager(num_blocks=6, block_size=BS)
    prompt = tokens(0, 9)
    assert prefill(m, "a", prompt) == [0, 1, 2]
    m.free("a")
    # Uncached partial block 2 first, untouched 3..5, then a's tail before its head.
    assert m.pool.free_block_ids() == [2, 3, 4, 5, 1, 0]
    assert m.num_cached_blocks == 2
    assert m.get_computed_blocks("b", prompt) == ([0, 1], 8)
    assert m.allocate_slots("b", prompt, 8, 1, [0, 1]) == [0, 1, 2]
    assert ref_cnts(m) == [1, 1, 1, 0, 0, 0]
    assert m.pool.free_block_ids() == [3, 4, 5]
    m.free("b")
    assert m.pool.free_block_ids() == [2, 3, 4, 5, 1, 0]
    assert_all_free(m)


def test_eviction_takes_lru_first_and_a_requests_tail_before_its_head() -> None:
    m = BlockManager(num_blocks=8, block_size=BS)
    prompt_a, prompt_b = tokens(0, 8), tokens(100, 8)
    ha, hb = hash_prompt_blocks(prompt_a, BS), hash_prompt_blocks(prompt_b, BS)
    assert prefill(m, "a", prompt_a) == [0, 1]
    assert prefill(m, "b", prompt_b) == [2, 3]
    m.free("a")  # a is least recently used
    m.free("b")
    assert m.pool.free_block_ids() == [4, 5, 6, 7, 1, 0, 3, 2]
    m.drain_events()
    # 6 blocks: the 4 never-used ones, then a's tail (1), then a's head (0).
    assert prefill(m, "c", tokens(200, 24)) == [4, 5, 6, 7, 1, 0]
    events = m.drain_events()
    assert events[0] == BlockRemoved([ha[1], ha[0]])  # one event for the whole allocation
    assert m.get_computed_blocks("a2", prompt_a + [1]) == ([], 0)
    assert m.get_computed_blocks("b2", prompt_b + [1]) == ([2, 3], 8)
    # d hits b's head (2) and takes 3 from the queue head, evicting b's tail block.
    assert prefill(m, "d", prompt_b[:4] + [7]) == [2, 3]
    assert m.drain_events() == [BlockRemoved([hb[1]])]
    m.free("d")
    assert m.pool.free_block_ids() == [3, 2]  # the uncached partial block goes first
    for rid in ("a2", "b2", "c"):
        m.free(rid)
    assert_all_free(m)


def test_full_pool_returns_none_and_changes_nothing() -> None:
    m = BlockManager(num_blocks=4, block_size=BS)
    prompt_a = tokens(0, 8)
    assert prefill(m, "a", prompt_a) == [0, 1]
    m.free("a")  # cached, free: [2, 3, 1, 0]
    assert prefill(m, "c", tokens(300, 4)) == [2]
    before = snapshot(m)
    # b hits a's 2 free blocks but needs 2 more: 4 free blocks needed, 3 free.
    prompt_b = prompt_a + tokens(50, 8)
    hit_ids, num_computed = m.get_computed_blocks("b", prompt_b)
    assert (hit_ids, num_computed) == ([0, 1], 8)
    assert m.allocate_slots("b", prompt_b, 8, 8, hit_ids) is None
    assert m.allocate_slots("e", tokens(400, 13), 0, 13) is None
    assert snapshot(m) == before
    assert m.block_table("b") == [] and m.block_table("e") == []
    # A decode step that needs a new block fails the same way once the pool is full.
    assert prefill(m, "f", tokens(600, 12)) == [3, 1, 0]
    before = snapshot(m)
    grown = tokens(600, 12) + [1]
    assert m.allocate_slots("f", grown, 12, 1) is None
    assert snapshot(m) == before
    for rid in "bcef":
        m.free(rid)
    assert_all_free(m)


def test_cache_salt_separates_identical_prompts() -> None:
    m = BlockManager(num_blocks=16, block_size=BS)
    prompt = tokens(0, 9)
    assert prefill(m, "a", prompt, salt="tenant-a") == [0, 1, 2]
    assert m.get_computed_blocks("b", prompt, "tenant-b") == ([], 0)
    assert m.get_computed_blocks("c", prompt) == ([], 0)
    assert m.get_computed_blocks("d", prompt, "tenant-a") == ([0, 1], 8)
    assert m.pool.blocks[1].block_hash == hash_prompt_blocks(prompt, BS, "tenant-a")[1]
    # The salt is fixed by the first call; later calls may omit it but not change it.
    assert m.allocate_slots("d", prompt, 8, 1, [0, 1]) == [0, 1, 3]
    with pytest.raises(ValueError, match="cache_salt"):
        m.allocate_slots("d", prompt, 9, 0, cache_salt="tenant-b")
    for rid in "abcd":
        m.free(rid)
    assert_all_free(m)


def test_events_are_batched_and_name_the_right_hashes() -> None:
    m = BlockManager(num_blocks=5, block_size=BS)
    prompt = tokens(0, 10)
    h = hash_prompt_blocks(prompt + [10, 11, 12, 13], BS)
    prefill(m, "a", prompt)
    assert m.drain_events() == [BlockStored([h[0], h[1]], None, 8)]
    assert m.drain_events() == []
    grown = prompt + [10]
    assert m.allocate_slots("a", grown, 10, 1) == [0, 1, 2]
    assert m.drain_events() == []
    grown.append(11)  # t11 fills block 2
    assert m.allocate_slots("a", grown, 11, 1) == [0, 1, 2]
    assert m.drain_events() == [BlockStored([h[2]], h[1], 4)]
    m.free("a")
    assert m.reset_prefix_cache() is True
    assert m.drain_events() == [AllBlocksCleared()]
    assert m.num_cached_blocks == 0
    assert m.get_computed_blocks("x", grown + [0]) == ([], 0)
    m.free("x")  # drops the keys the lookup kept
    # Evictions: cache two blocks, free them, take them back for other content.
    prefill(m, "b", tokens(50, 8))
    m.free("b")
    m.drain_events()
    prefill(m, "c", tokens(90, 17))  # needs all 5 blocks: evicts both cached ones
    hb = hash_prompt_blocks(tokens(50, 8), BS)
    hc = hash_prompt_blocks(tokens(90, 17), BS)
    assert m.drain_events() == [BlockRemoved([hb[1], hb[0]]), BlockStored(hc, None, 16)]
    assert m.reset_prefix_cache() is False  # c holds blocks: nothing changes
    assert m.num_cached_blocks == 4 and m.drain_events() == []
    m.free("c")
    assert_all_free(m)


def test_chunked_prefill_registers_blocks_as_chunks_fill_them() -> None:
    m = BlockManager(num_blocks=8, block_size=BS)
    prompt = tokens(0, 10)
    h = hash_prompt_blocks(prompt, BS)
    assert m.allocate_slots("a", prompt, 0, 3) == [0]
    assert m.drain_events() == []
    assert m.allocate_slots("a", prompt, 3, 5) == [0, 1]
    assert m.drain_events() == [BlockStored([h[0], h[1]], None, 8)]
    assert m.allocate_slots("a", prompt, 8, 2) == [0, 1, 2]
    assert m.drain_events() == []
    m.free("a")
    assert_all_free(m)


def test_same_prompt_in_one_step_keeps_own_blocks_and_registers_once() -> None:
    m = BlockManager(num_blocks=8, block_size=BS)
    prompt = tokens(0, 9)
    # Both looked up before either allocated (same scheduler step): no hits for either.
    assert m.get_computed_blocks("a", prompt) == ([], 0)
    assert m.get_computed_blocks("b", prompt) == ([], 0)
    assert m.allocate_slots("a", prompt, 0, 9, []) == [0, 1, 2]
    assert m.allocate_slots("b", prompt, 0, 9, []) == [3, 4, 5]
    assert m.drain_events() == [BlockStored(hash_prompt_blocks(prompt, BS), None, 8)]
    assert [block.block_hash is not None for block in m.pool.blocks] == [
        True, True, False, False, False, False, False, False
    ]  # fmt: skip
    m.free("b")  # b's duplicates are worthless: reused before anything cached
    assert m.pool.free_block_ids() == [5, 4, 3, 6, 7]
    m.free("a")
    assert_all_free(m)


def test_decode_registers_each_block_exactly_when_it_fills() -> None:
    m = BlockManager(num_blocks=8, block_size=BS)
    seq = tokens(0, 5)
    assert prefill(m, "a", seq) == [0, 1]
    assert m.drain_events() == [BlockStored(hash_prompt_blocks(seq, BS), None, 4)]
    for next_token in range(100, 116):
        seq.append(next_token)  # sampled last step, its KV is computed now
        table = m.allocate_slots("a", seq, len(seq) - 1, 1)
        assert table == list(range(cdiv(len(seq), BS)))
        events = m.drain_events()
        expected = hash_prompt_blocks(seq, BS)
        assert m.num_cached_blocks == len(seq) // BS
        if len(seq) % BS == 0:
            assert events == [BlockStored([expected[-1]], expected[-2], BS)]
        else:
            assert events == []
    m.free("a")
    assert_all_free(m)


def test_prefix_caching_disabled_means_no_hashes_hits_or_events() -> None:
    m = BlockManager(num_blocks=8, block_size=BS, enable_prefix_caching=False)
    prompt = tokens(0, 9)
    assert prefill(m, "a", prompt) == [0, 1, 2]
    assert m.get_computed_blocks("b", prompt) == ([], 0)
    assert prefill(m, "b", prompt) == [3, 4, 5]
    assert m.num_cached_blocks == 0
    assert all(block.block_hash is None for block in m.pool.blocks)
    m.free("a")
    assert m.pool.free_block_ids() == [2, 1, 0, 6, 7]  # a's tail first, then its head
    m.free("b")
    assert m.reset_prefix_cache() is True
    assert m.drain_events() == []
    assert_all_free(m)


def test_free_is_idempotent_and_misuse_is_refused() -> None:
    m = BlockManager(num_blocks=8, block_size=BS)
    m.free("never-seen")
    prefill(m, "a", tokens(0, 8))
    m.free("a")
    m.free("a")
    assert_all_free(m)
    hit_ids, num_computed = m.get_computed_blocks("b", tokens(0, 9))
    assert hit_ids == [0, 1]
    with pytest.raises(ValueError, match="known"):
        m.allocate_slots("b", tokens(0, 9), num_computed, 5, hit_ids)
    with pytest.raises(ValueError, match="include the prefix-cache hits"):
        m.allocate_slots("b", tokens(0, 9), 0, 9, hit_ids)
    prefill(m, "evict", tokens(100, 32))  # evicts b's hits before b allocated
    with pytest.raises(ValueError, match="no longer a cache hit"):
        m.allocate_slots("b", tokens(0, 9), num_computed, 1, hit_ids)
    with pytest.raises(ValueError, match="get_computed_blocks"):
        m.allocate_slots("z", tokens(0, 9), 4, 5, [0])
    m.free("evict")
    m.free("b")
    assert_all_free(m)


@dataclass
class _Live:
    tokens: list[int]
    salt: str | None
    num_computed: int = 0
    table: list[int] = field(default_factory=list)


def _check_invariants(m: BlockManager, live: dict[str, _Live], index: set[bytes]) -> None:
    expected_refs = [0] * m.num_blocks
    for rid, req in live.items():
        assert m.block_table(rid) == req.table
        assert len(req.table) == cdiv(req.num_computed, BS)
        assert len(set(req.table)) == len(req.table)
        for block_id in req.table:
            expected_refs[block_id] += 1
    assert ref_cnts(m) == expected_refs
    free_ids = m.pool.free_block_ids()
    assert len(free_ids) == len(set(free_ids)) == m.num_free_blocks
    assert set(free_ids) == {i for i, refs in enumerate(expected_refs) if refs == 0}
    cached = {b.block_hash: b for b in m.pool.blocks if b.block_hash is not None}
    assert len(cached) == m.num_cached_blocks
    assert all(m.pool.get_cached_block(h) is b for h, b in cached.items())
    # An index fed only by the events mirrors the cache exactly.
    for event in m.drain_events():
        if isinstance(event, BlockStored):
            assert event.num_tokens == len(event.block_hashes) * BS
            assert index.isdisjoint(event.block_hashes)
            index.update(event.block_hashes)
        elif isinstance(event, BlockRemoved):
            assert index.issuperset(event.block_hashes)
            index.difference_update(event.block_hashes)
        else:
            index.clear()
    assert index == set(cached)
    if not m.enable_prefix_caching:
        assert not cached


@pytest.mark.parametrize("enable_prefix_caching", [True, False])
@pytest.mark.parametrize("seed", range(25))
def test_random_interleavings_keep_invariants(seed: int, enable_prefix_caching: bool) -> None:
    rng = random.Random(seed)
    m = BlockManager(rng.randint(3, 24), BS, enable_prefix_caching)
    prefixes = [[rng.randrange(40) for _ in range(rng.randint(0, 13))] for _ in range(3)]
    live: dict[str, _Live] = {}
    index: set[bytes] = set()
    # Ground truth: the full prefix (and salt) whose KV each block holds once full.
    content: dict[int, tuple] = {}

    def schedule(rid: str, req: _Live, num_new: int, hit_ids: list[int] | None) -> bool:
        table = m.allocate_slots(rid, req.tokens, req.num_computed, num_new, hit_ids)
        if table is None:
            return False
        req.table, req.num_computed = table, req.num_computed + num_new
        for i in range(req.num_computed // BS):
            content[table[i]] = (req.salt, tuple(req.tokens[: (i + 1) * BS]))
        return True

    for step in range(250):
        op = rng.random()
        if op < 0.3 and len(live) < 6:
            rid = f"r{step}"
            salt = rng.choice([None, "t"])
            prompt = rng.choice(prefixes) + [rng.randrange(40) for _ in range(rng.randint(1, 9))]
            req = _Live(prompt, salt)
            hit_ids, num_computed = m.get_computed_blocks(rid, prompt, salt)
            assert num_computed == len(hit_ids) * BS < len(prompt)
            for i, block_id in enumerate(hit_ids):  # a hit is KV of exactly this prefix
                assert content[block_id] == (salt, tuple(prompt[: (i + 1) * BS]))
            req.num_computed = num_computed
            chunk = rng.randint(1, len(prompt) - num_computed)
            if schedule(rid, req, chunk, hit_ids):
                live[rid] = req
            else:
                m.free(rid)  # not admitted: drop what the lookup kept
        elif op < 0.85 and live:
            rid = rng.choice(sorted(live))
            req = live[rid]
            if req.num_computed == len(req.tokens):
                req.tokens.append(rng.randrange(40))  # decode
            num_new = rng.randint(1, len(req.tokens) - req.num_computed)
            if not schedule(rid, req, num_new, None):
                m.free(rid)  # preempted
                del live[rid]
        elif op < 0.97 and live:
            rid = rng.choice(sorted(live))
            m.free(rid)
            del live[rid]
        else:
            assert m.reset_prefix_cache() is (not live or not enable_prefix_caching)
        _check_invariants(m, live, index)
    for rid in list(live):
        m.free(rid)
        del live[rid]
        _check_invariants(m, live, index)
    assert_all_free(m)
