"""The KV host tier at tp=2 on real Ray actors (gloo): every rank copies its shard of the
same host blocks, and the outputs equal those of the same engine reusing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve import LLM
from tests.engine.conversations import greedy, run_conversations, seeded, user_turns

pytestmark = pytest.mark.usefixtures("ray_cluster")

# 16 device blocks (256 tokens) under three growing conversations: constant eviction.
NUM_KV_BLOCKS = 16
NUM_HOST_BLOCKS = 256
# A block of the tp checkpoint on one rank at tp=2: 2 (K, V) x 2 layers x 16 tokens x
# 1 KV head x 16 x 4 bytes.
RANK_BLOCK_BYTES = 4096


def test_tier_outputs_at_tp2_equal_recomputing_everything(tp_checkpoint: Path) -> None:
    turns = user_turns(num_conversations=3, num_turns=3, turn_len=60, seed=3)
    options = dict(num_kv_blocks=NUM_KV_BLOCKS, dtype="float32", device="cpu",
                   kv_host_memory=NUM_HOST_BLOCKS * RANK_BLOCK_BYTES)
    single = LLM(str(tp_checkpoint), **options)
    expected_greedy = run_conversations(single.engine, turns, greedy(3), salt="g")
    single.shutdown()
    parallel = LLM(str(tp_checkpoint), tensor_parallel_size=2, **options)
    try:
        engine = parallel.engine
        assert engine.block_manager.pool.host.num_blocks == NUM_HOST_BLOCKS
        assert engine.stats().num_host_kv_blocks == NUM_HOST_BLOCKS
        results = {}
        for name, sampling in (("greedy", greedy), ("seeded", seeded)):
            reused = run_conversations(engine, turns, sampling(3), salt=name)
            recomputed = run_conversations(engine, turns, sampling(3), salt_per_request=True)
            results[name] = (reused, recomputed)
        stats = engine.stats()
    finally:
        parallel.shutdown()
    for reused, recomputed in results.values():
        assert reused.token_ids == recomputed.token_ids
        assert sum(reused.num_cached_tokens) > 0 == sum(recomputed.num_cached_tokens)
    assert results["greedy"][0].token_ids == expected_greedy.token_ids
    assert stats.num_host_hit_tokens > 0 and stats.num_restored_blocks > 0
    # Both ranks hold their half of every block moved.
    assert stats.kv_bytes_restored == stats.num_restored_blocks * 2 * RANK_BLOCK_BYTES
