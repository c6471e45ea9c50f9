"""Tensor parallelism on real Ray actors (gloo on CPU) equals the single-process model."""

from __future__ import annotations

from pathlib import Path
from statistics import mean

import pytest
import torch

from cluster.executor import RayExecutor
from cluster.worker import ShardReport, digest
from model.config import ModelConfig
from model.factory import build_model
from model.kv_cache import KVCacheSpec, allocate_kv_cache
from model.runner import ModelRunner
from model.runner_config import RunnerConfig
from model.step import ScheduledSequence, StepInput
from serve import LLM, SamplingParams
from tests.cluster.shards import expected_shard

pytestmark = pytest.mark.usefixtures("ray_cluster")

BLOCK_SIZE = 16
NUM_KV_BLOCKS = 64


def cpu_config(path: Path, num_kv_blocks: int = NUM_KV_BLOCKS) -> RunnerConfig:
    return RunnerConfig(model=str(path), num_kv_blocks=num_kv_blocks,
                        dtype="float32", device="cpu", block_size=BLOCK_SIZE)


def parity_steps(vocab_size: int) -> list[StepInput]:
    """A batched prefill of two prompts into scattered blocks, then one decode step."""
    gen = torch.Generator().manual_seed(7)
    a, b = (torch.randint(3, vocab_size, (n,), generator=gen).tolist() for n in (37, 20))
    tables = {"a": [9, 2, 5], "b": [0, 7]}
    return [
        StepInput([ScheduledSequence("a", a, 0, tables["a"], True),
                   ScheduledSequence("b", b, 0, tables["b"], True)]),
        StepInput([ScheduledSequence("a", [11], 37, tables["a"], True),
                   ScheduledSequence("b", [12], 20, tables["b"], True)]),
    ]


def local_logits(path: Path, steps: list[StepInput]) -> list[torch.Tensor]:
    model = build_model(path, dtype="float32")
    spec = KVCacheSpec.for_model(model.config, model.ctx, BLOCK_SIZE, torch.float32)
    runner = ModelRunner(model, allocate_kv_cache(spec, NUM_KV_BLOCKS, torch.device("cpu")),
                         BLOCK_SIZE, torch.device("cpu"))
    return [runner.compute_logits(step)[0] for step in steps]


def assert_exact_shards(reports: list[ShardReport], path: Path, tp: int) -> None:
    config = ModelConfig.from_pretrained(path)
    for report in reports:
        expected = expected_shard(path, config, report.rank, tp)
        assert report.params.keys() == expected.keys()
        for name, tensor in expected.items():
            assert report.params[name] == digest(tensor), f"rank {report.rank}: {name}"


@pytest.mark.parametrize("tp", [2, 4])
def test_logits_and_shards_match_tp1(tp_checkpoint: Path, tp: int) -> None:
    """tp=2 splits the 2 KV heads; tp=4 replicates each on two ranks."""
    steps = parity_steps(ModelConfig.from_pretrained(tp_checkpoint).vocab_size)
    expected = local_logits(tp_checkpoint, steps)
    executor = RayExecutor(cpu_config(tp_checkpoint), tp)
    try:
        assert executor.num_kv_blocks == NUM_KV_BLOCKS
        actual = [executor.group.compute_logits(step) for step in steps]
        reports = executor.group.reports()
    finally:
        executor.shutdown()
    for got, want in zip(actual, expected, strict=True):
        assert got.shape == want.shape == (2, 32000)
        assert (got - want).abs().max().item() <= 1e-5
    assert [r.rank for r in reports] == list(range(tp))
    assert_exact_shards(reports, tp_checkpoint, tp)


def test_greedy_generation_at_tp2_matches_tp1(tp_checkpoint: Path) -> None:
    prompts = ["Hello, my name is", "The capital of France is", "1, 2, 3, 4, 5,",
               "Once upon a time in a land far, far away there lived"]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    single = LLM(model=str(tp_checkpoint), tensor_parallel_size=1, num_kv_blocks=NUM_KV_BLOCKS,
                 dtype="float32", device="cpu")
    expected = single.generate(prompts, params)
    parallel = LLM(model=str(tp_checkpoint), tensor_parallel_size=2,
                   num_kv_blocks=NUM_KV_BLOCKS, dtype="float32", device="cpu")
    try:
        actual = parallel.generate(prompts, params)
        assert parallel.engine.stats().num_free_kv_blocks == NUM_KV_BLOCKS
    finally:
        parallel.shutdown()
    assert [o.outputs[0].token_ids for o in actual] == \
        [o.outputs[0].token_ids for o in expected]
    assert all(len(o.outputs[0].token_ids) == 24 for o in actual)


def test_a_rank_holds_and_keeps_resident_only_its_shard(big_checkpoint: Path) -> None:
    """Peak resident memory of a rank is a constant plus a multiple of weights / tp.

    The multiple is between 1 and 2: the rank keeps its shard, and while loading it the
    pages safetensors maps from the file also count as resident. Measured here (171 MiB of
    weights): tp=1 peaks near 640 MiB, each tp=2 rank near 490 MiB (slope about 1.8).
    """
    reports: dict[int, list[ShardReport]] = {}
    for tp in (1, 2):
        executor = RayExecutor(cpu_config(big_checkpoint, num_kv_blocks=4), tp)
        try:
            reports[tp] = executor.group.reports()
        finally:
            executor.shutdown()
    assert_exact_shards(reports[2], big_checkpoint, 2)
    weights = reports[1][0].param_bytes
    assert weights > 150 * 2**20
    for report in reports[2]:
        # Halved, except the replicated norm scales (a few KiB).
        assert abs(report.param_bytes - weights / 2) < 0.001 * weights
    peak_tp1 = reports[1][0].peak_rss_bytes
    peak_tp2 = mean(r.peak_rss_bytes for r in reports[2])
    slope = (peak_tp1 - peak_tp2) / (weights - weights / 2)
    assert 0.8 <= slope <= 2.5, (peak_tp1 / 2**20, peak_tp2 / 2**20, weights / 2**20)
