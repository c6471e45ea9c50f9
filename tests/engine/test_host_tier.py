"""The KV host tier end to end on a tiny random Mistral: the copies themselves, identical
outputs with the tier on and off under forced eviction, and hit rates against an unbounded
device pool."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.kv_cache import KVCacheSpec, allocate_kv_cache
from model.kv_host_tier import HostKVTier, contiguous_runs
from model.step import BlockCopies
from serve import LLM
from tests.engine.conversations import greedy, run_conversations, seeded, user_turns

SPEC = KVCacheSpec(num_layers=2, num_kv_heads=2, head_dim=8, block_size=4, dtype=torch.float32)
# The tiny checkpoint's block: 2 (K, V) x 2 layers x 16 tokens x 2 heads x 16 x 4 bytes.
TINY_BLOCK_BYTES = 8192


def test_contiguous_runs() -> None:
    assert contiguous_runs([7, 8, 9, 3, 4, 11]) == [(0, 7, 3), (3, 3, 2), (5, 11, 1)]
    assert contiguous_runs([5]) == [(0, 5, 1)]
    assert contiguous_runs([]) == []
    assert contiguous_runs([2, 2, 3]) == [(0, 2, 1), (1, 2, 2)]


@pytest.mark.parametrize("max_staged_blocks", [512, 2])
def test_host_tier_copies_blocks_exactly_and_offloads_before_restoring(
        max_staged_blocks: int) -> None:
    device = torch.device("cpu")
    caches = allocate_kv_cache(SPEC, 12, device)
    for cache in caches:
        cache.normal_()
    before = [cache.clone() for cache in caches]
    tier = HostKVTier(SPEC, 8, device, max_staged_blocks)
    assert tier.bytes_per_block == SPEC.bytes_per_block
    assert tier.copy(BlockCopies(offload=[(4, 0), (9, 1), (2, 5)]), caches) is caches
    for layer, cache in enumerate(caches):
        for device_block, host_block in ((4, 0), (9, 1), (2, 5)):
            assert torch.equal(tier.blocks[layer, host_block], cache[:, device_block])
        cache[:, [4, 9, 2]] = 0.0
    # One step: device block 3 is offloaded and also the destination of a restore, so the
    # offload must read it first; blocks 4 and 9 come back from their host blocks.
    tier.copy(BlockCopies(offload=[(3, 2)], restore=[(0, 4), (1, 3), (5, 9)]), caches)
    for layer, cache in enumerate(caches):
        assert torch.equal(tier.blocks[layer, 2], before[layer][:, 3])
        assert torch.equal(cache[:, 4], before[layer][:, 4])
        assert torch.equal(cache[:, 3], before[layer][:, 9])
        assert torch.equal(cache[:, 9], before[layer][:, 2])
        assert torch.equal(cache[:, 2], torch.zeros_like(cache[:, 2]))
        untouched = [0, 1, 5, 6, 7, 8, 10, 11]
        assert torch.equal(cache[:, untouched], before[layer][:, untouched])


def test_a_budget_below_one_block_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one block"):
        HostKVTier(SPEC, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def engines(long_checkpoint: Path):
    """One engine per configuration, reused by the tests (each test leaves them idle):
    a device pool of 40 blocks (640 tokens) with and without a host tier, and one that never
    evicts. Small prefill chunks, so restored prefixes meet chunked prefill."""
    common = dict(dtype="float32", max_num_batched_tokens=96)
    llms = {
        "tier": LLM(str(long_checkpoint), num_kv_blocks=40,
                    kv_host_memory=1024 * TINY_BLOCK_BYTES, **common),
        "off": LLM(str(long_checkpoint), num_kv_blocks=40, **common),
        "unbounded": LLM(str(long_checkpoint), num_kv_blocks=2048, **common),
    }
    assert llms["tier"].engine.block_manager.pool.host.num_blocks == 1024
    yield {name: llm.engine for name, llm in llms.items()}
    for llm in llms.values():
        llm.shutdown()


@pytest.mark.parametrize("sampling", [greedy, seeded])
def test_outputs_are_identical_with_the_tier_on_and_off(engines, sampling) -> None:
    turns = user_turns(num_conversations=4, num_turns=3, turn_len=110, seed=1)
    params = sampling(len(turns))
    stats_before = engines["tier"].stats()
    results = {name: run_conversations(engine, turns, params, salt=sampling.__name__)
               for name, engine in engines.items()}
    tier, off, unbounded = results["tier"], results["off"], results["unbounded"]
    assert tier.token_ids == off.token_ids == unbounded.token_ids
    # Same hits as a pool that never evicts, so the same chunks over the same KV: the
    # logprobs match bit for bit, which a wrongly restored block would not.
    assert tier.num_cached_tokens == unbounded.num_cached_tokens
    assert tier.logprobs == unbounded.logprobs
    assert sum(off.num_cached_tokens) < sum(tier.num_cached_tokens)
    stats = engines["tier"].stats()
    assert stats.num_restored_blocks > stats_before.num_restored_blocks
    assert stats.num_offloaded_blocks > stats_before.num_offloaded_blocks
    assert stats.kv_bytes_restored == stats.num_restored_blocks * TINY_BLOCK_BYTES


def test_eight_conversations_hit_like_an_unbounded_pool(long_checkpoint: Path) -> None:
    """8 conversations x 3 turns of about 600 tokens: 1,800-token prompts, 900 blocks in
    all, on a device pool of 160. The host tier hits every token the unbounded pool does."""
    turns = user_turns(num_conversations=8, num_turns=3, turn_len=600, seed=2)
    params = greedy(len(turns), max_tokens=4)
    common = dict(dtype="float32", max_num_batched_tokens=2048)
    configs = {"tier": dict(num_kv_blocks=160, kv_host_memory=1024 * TINY_BLOCK_BYTES),
               "off": dict(num_kv_blocks=160), "unbounded": dict(num_kv_blocks=2048)}
    results = {}
    for name, options in configs.items():
        llm = LLM(str(long_checkpoint), **common, **options)
        try:
            results[name] = run_conversations(llm.engine, turns, params)
            stats = llm.engine.stats()
        finally:
            llm.shutdown()
        if name == "tier":
            tier_stats = stats
    tier, off, unbounded = results["tier"], results["off"], results["unbounded"]
    assert tier.num_cached_tokens == unbounded.num_cached_tokens
    assert tier.token_ids == off.token_ids == unbounded.token_ids
    later = len(turns)  # the first round has nothing to reuse
    assert tier.hit_rate(later) > 0.55  # turn 2 reuses half its prompt, turn 3 two thirds
    assert off.hit_rate(later) < 0.5 * tier.hit_rate(later)
    assert tier_stats.num_host_hit_tokens > 0
    assert tier_stats.num_device_hit_tokens + tier_stats.num_host_hit_tokens == \
        sum(tier.num_cached_tokens)
    print(f"hit rate of turns 2-3: host tier {tier.hit_rate(later):.3f}, "
          f"unbounded {unbounded.hit_rate(later):.3f}, no tier {off.hit_rate(later):.3f}")
