"""Speculative decoding at tp=2: drafts are proposed once, by the engine on the driver, and
travel in the step; every rank runs the k + 1 verification rows, rank 0 samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve import LLM, SamplingParams

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_greedy_with_drafts_at_tp2_matches_tp1_without(tp_checkpoint: Path) -> None:
    phrase = [101, 2002, 303, 4004, 505, 6006]
    base = LLM(model=str(tp_checkpoint), num_kv_blocks=64, dtype="float32", device="cpu")
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    seed = [phrase * 3 + [7]]
    continuation = base.generate(seed, params)[0].outputs[0].token_ids
    prompts = [seed[0] + continuation + seed[0], phrase * 4]
    expected = [o.outputs[0].token_ids for o in base.generate(prompts, params)]
    base.shutdown()
    spec = {"method": "ngram", "num_speculative_tokens": 4, "disable_by_batch_size": 64}
    parallel = LLM(model=str(tp_checkpoint), tensor_parallel_size=2, num_kv_blocks=64,
                   dtype="float32", device="cpu", speculative_config=spec)
    try:
        outputs = parallel.generate(prompts, params)
        stats = parallel.engine.stats()
    finally:
        parallel.shutdown()
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert stats.num_spec_accepted_tokens > 0
