"""Tiers in the prefix index (in-process and a real Redis) and the router's cost of serving a
prompt: a device block costs nothing, a host block its copy, a missing block its prefill."""

from __future__ import annotations

import random

from serve.engine.block_hash import hash_prompt_blocks
from serve.engine.block_manager import BlockManager
from serve.engine.kv_events import DEVICE, HOST, AllBlocksCleared, BlockRemoved, BlockStored
from serve.prefix_index import PrefixIndex, TierMatch, leading_tier_counts
from serve.routing.policy import (
    PrefixCostModel,
    ReplicaLoad,
    RoutingDecision,
    RoutingPolicy,
    choose_by_prefix_or_load,
)
from tests.serve.conftest import RedisServer, redis_index

BLOCK_SIZE = 16
POLICY = RoutingPolicy()


def conversation(num_blocks: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return hash_prompt_blocks([rng.randrange(32000) for _ in range(num_blocks * BLOCK_SIZE)],
                              BLOCK_SIZE)


def on(tier: str, hashes: list[bytes]) -> BlockStored:
    return BlockStored(list(hashes), None, len(hashes) * BLOCK_SIZE, tier)  # type: ignore[arg-type]


def loads(*replica_ids: str) -> list[ReplicaLoad]:
    return [ReplicaLoad(replica_id, 0, 10) for replica_id in replica_ids]


def test_the_latest_store_sets_a_blocks_tier(index: PrefixIndex) -> None:
    prompt = conversation(8)
    index.publisher("A").publish([on(DEVICE, prompt)])
    # B held all 8; its device evicted the last 5 to its host tier, then dropped one there.
    index.publisher("B").publish([on(DEVICE, prompt), on(HOST, prompt[3:]),
                                  BlockRemoved([prompt[7]], HOST)])
    assert index.match_prefix_tiers(prompt) == {"A": TierMatch(8, 0), "B": TierMatch(7, 4)}
    assert index.match_prefix(prompt) == {"A": 8, "B": 7}
    # A prompt hit on B brings blocks 3 and 4 back to its device.
    index.publisher("B").publish([on(DEVICE, prompt[3:5])])
    assert index.match_prefix_tiers(prompt)["B"] == TierMatch(7, 2)
    assert index.match_prefix_tiers(prompt[:4]) == {"A": TierMatch(4, 0), "B": TierMatch(4, 0)}
    index.publisher("B").publish([AllBlocksCleared(), on(HOST, prompt[:2])])
    assert index.match_prefix_tiers(prompt) == {"A": TierMatch(8, 0), "B": TierMatch(2, 2)}
    index.remove_replica("B")
    assert index.match_prefix_tiers(prompt) == {"A": TierMatch(8, 0)}
    assert index.match_prefix_tiers([]) == {}


def test_random_tiered_histories_match_the_reference_rule(index: PrefixIndex) -> None:
    rng = random.Random(99)
    prompt = conversation(30)
    holders: list[dict[str, str]] = [{} for _ in prompt]
    for _ in range(60):
        replica = rng.choice("ABCD")
        start = rng.randrange(len(prompt))
        span = range(start, min(len(prompt), start + rng.randrange(1, 10)))
        roll = rng.random()
        if roll < 0.6:
            tier = HOST if roll < 0.25 else DEVICE
            index.publisher(replica).publish([on(tier, [prompt[i] for i in span])])
            for i in span:
                holders[i][replica] = tier
        else:
            index.publisher(replica).publish([BlockRemoved([prompt[i] for i in span])])
            for i in span:
                holders[i].pop(replica, None)
        assert index.match_prefix_tiers(prompt) == leading_tier_counts(holders)


def test_index_follows_block_managers_with_host_tiers(index: PrefixIndex) -> None:
    """Events of two real prefix caches with host tiers keep the index equal to where each
    cache holds each key."""
    managers = {name: BlockManager(12, 4, num_host_blocks=24) for name in "AB"}
    rng = random.Random(8)
    chats: list[list[int]] = [[] for _ in range(5)]
    for turn in range(80):
        chat = chats[rng.randrange(len(chats))]
        if len(chat) > 36:
            chat.clear()
        chat += [rng.randrange(1000) for _ in range(rng.randrange(3, 10))]
        name = rng.choice("AB")
        manager = managers[name]
        hit_ids, num_computed = manager.get_computed_blocks(f"t{turn}", chat)
        assert manager.allocate_slots(f"t{turn}", chat, num_computed,
                                      len(chat) - num_computed, hit_ids) is not None
        manager.drain_copies()
        manager.free(f"t{turn}")
        index.publisher(name).publish(manager.drain_events())
        if turn % 20 == 19:  # the periodic republish replaces what the index holds
            index.publisher(name).resync(manager.pool.resync_events())
        for other in chats:
            hashes = hash_prompt_blocks(other, 4)
            holders = []
            for key in hashes:
                holding = {}
                for replica, m in managers.items():
                    if m.pool.get_cached_block(key) is not None:
                        holding[replica] = DEVICE
                    elif m.pool.in_host_tier(key):
                        holding[replica] = HOST
                holders.append(holding)
            assert index.match_prefix_tiers(hashes) == leading_tier_counts(holders)


def test_router_prefers_device_over_host_and_host_over_nothing(index: PrefixIndex) -> None:
    prompt = conversation(20)
    index.publisher("device").publish([on(DEVICE, prompt)])
    index.publisher("host").publish([on(HOST, prompt)])
    matches = index.match_prefix_tiers(prompt)
    both = choose_by_prefix_or_load(matches, loads("device", "host"), POLICY)
    assert both == RoutingDecision(("device",), "prefix")
    # Load only breaks ties: the device replica wins while it is under its cap (8 of 10).
    busy = [ReplicaLoad("device", 7, 10), ReplicaLoad("host", 0, 10)]
    assert choose_by_prefix_or_load(matches, busy, POLICY).replica_ids == ("device",)
    full = [ReplicaLoad("device", 8, 10), ReplicaLoad("host", 0, 10)]
    assert choose_by_prefix_or_load(matches, full, POLICY).replica_ids == ("host",)
    index.remove_replica("device")
    matches = index.match_prefix_tiers(prompt)
    assert matches == {"host": TierMatch(20, 20)}
    decision = choose_by_prefix_or_load(matches, loads("host", "nothing"), POLICY)
    assert decision == RoutingDecision(("host",), "prefix")


def test_cost_model_weighs_a_longer_host_prefix_against_a_shorter_device_one() -> None:
    cost = PrefixCostModel()
    assert round(cost.copy_s_per_token / cost.prefill_s_per_token, 3) == 0.087
    assert cost.blocks_saved(TierMatch(10)) == 10
    matches = {"a": TierMatch(10, 0), "b": TierMatch(12, 8)}
    assert choose_by_prefix_or_load(matches, loads("a", "b"), POLICY).replica_ids == ("b",)
    # Where a copy costs 60% of a prefill, 8 host blocks are worth less than 2 missing.
    slow_link = RoutingPolicy(cost=PrefixCostModel(prefill_s_per_token=1e-5,
                                                   copy_s_per_token=6e-6))
    assert choose_by_prefix_or_load(matches, loads("a", "b"), slow_link).replica_ids == ("a",)
    # Plain counts are device blocks, as before tiers.
    assert choose_by_prefix_or_load({"a": 3, "b": 4}, loads("a", "b"),
                                    POLICY).replica_ids == ("b",)


def test_cache_salts_separate_tenants_on_the_host_tier_of_the_index(index: PrefixIndex) -> None:
    tokens = list(range(100, 100 + 4 * BLOCK_SIZE))
    index.publisher("A").publish([on(HOST, hash_prompt_blocks(tokens, BLOCK_SIZE, "tenant-a"))])
    assert index.match_prefix_tiers(hash_prompt_blocks(tokens, BLOCK_SIZE, "tenant-a")) == \
        {"A": TierMatch(4, 4)}
    assert index.match_prefix_tiers(hash_prompt_blocks(tokens, BLOCK_SIZE, "tenant-b")) == {}
    assert index.match_prefix_tiers(hash_prompt_blocks(tokens, BLOCK_SIZE)) == {}


def test_redis_reads_entries_without_a_tier_as_device_blocks(redis_server: RedisServer) -> None:
    """Entries written before tiers existed (plain replica ids) still match, on the device."""
    import redis

    index = redis_index(redis_server)
    prompt = conversation(3)
    client = redis.Redis.from_url(redis_server.url)
    for key in prompt:
        client.sadd(f"{index.key_prefix}:b:".encode() + key, "old")
    index.publisher("new").publish([on(HOST, prompt)])
    assert index.match_prefix_tiers(prompt) == {"old": TierMatch(3, 0), "new": TierMatch(3, 3)}
    index.publisher("new").publish([BlockRemoved(prompt)])
    assert index.match_prefix_tiers(prompt) == {"old": TierMatch(3, 0)}
    client.close()
    index.close()
