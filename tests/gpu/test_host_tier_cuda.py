"""The KV host tier on CUDA: pinned host blocks, copies on a side stream that the forward
waits for layer by layer, and engine outputs equal to a device pool that never evicts (the
CPU path of the same code runs in tests/engine/test_host_tier.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.kv_cache import KVCacheSpec, allocate_kv_cache
from model.kv_host_tier import HostKVTier, LayerWaits
from model.random_checkpoint import write_tiny_checkpoint
from model.step import BlockCopies
from serve import LLM
from tests.engine.conversations import greedy, run_conversations, seeded, user_turns

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA path needs a GPU"),
]

DEVICE = torch.device("cuda", 0)


def test_copies_are_exact_and_run_behind_the_caller() -> None:
    # Mistral-7B's per-layer block shape at tp=1, bf16: 64 KiB per block and layer.
    spec = KVCacheSpec(num_layers=4, num_kv_heads=8, head_dim=128, block_size=16,
                       dtype=torch.bfloat16)
    caches = allocate_kv_cache(spec, 4096, DEVICE)
    for cache in caches:
        cache.normal_()
    before = [cache[:, :2048].clone() for cache in caches]
    tier = HostKVTier(spec, 2048, DEVICE)
    assert tier.blocks.is_pinned()
    pairs = [(block, block) for block in range(2048)]
    waits = tier.copy(BlockCopies(offload=pairs), caches)
    assert isinstance(waits, LayerWaits)
    # 512 MiB on the link: the call returns while the side stream is still copying.
    assert not waits.events[-1].query()
    torch.cuda.synchronize()
    for cache in caches:
        cache[:, :2048] = 0
    waits = tier.copy(BlockCopies(restore=[(block, block + 2048) for block in range(2048)]),
                      caches)
    for layer, cache in enumerate(waits):  # what the model's layer loop does
        assert torch.equal(cache[:, 2048:], before[layer])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tier-cuda"),
                                 max_position_embeddings=4096)


@pytest.mark.parametrize("sampling", [greedy, seeded])
def test_engine_outputs_match_a_pool_that_never_evicts(checkpoint: Path, sampling) -> None:
    turns = user_turns(num_conversations=4, num_turns=3, turn_len=110, seed=1)
    params = sampling(len(turns))
    results = {}
    for name, options in (("tier", dict(num_kv_blocks=40, kv_host_memory=16 << 20)),
                          ("unbounded", dict(num_kv_blocks=2048))):
        llm = LLM(str(checkpoint), device="cuda", dtype="float32",
                  max_num_batched_tokens=96, **options)
        try:
            results[name] = run_conversations(llm.engine, turns, params)
            if name == "tier":
                assert llm.engine.stats().num_restored_blocks > 0
        finally:
            llm.shutdown()
    assert results["tier"].token_ids == results["unbounded"].token_ids
    assert results["tier"].num_cached_tokens == results["unbounded"].num_cached_tokens
    assert results["tier"].logprobs == results["unbounded"].logprobs
