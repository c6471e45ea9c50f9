"""Speculative decoding on CUDA: verification rows (k + 1 queries) through the Triton backend,
beside decode steps replayed from CUDA graphs, give the tokens of decoding without drafts.

A step with drafts runs eagerly (graphs hold one-token rows); steps without drafts replay.
The CPU twin of these checks is tests/engine/test_speculative.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.sampling_params import SamplingParams
from serve import LLM
from tests.engine.helpers import assert_all_blocks_free
from tests.engine.test_speculative import generate, repetitive_prompts, self_copying_prompts, spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ENGINE = {"num_kv_blocks": 256, "dtype": "float32", "device": "cuda",
          "attention_backend": "triton", "cuda_graphs": True, "cuda_graph_max_batch_size": 8}


@pytest.mark.parametrize("method", ["ngram", "suffix"])
def test_greedy_with_drafts_is_token_identical_on_cuda(tiny_checkpoint: Path,
                                                       method: str) -> None:
    with LLM(str(tiny_checkpoint), **ENGINE) as plain:
        prompts = self_copying_prompts(plain, 4) + repetitive_prompts(4, seed=11)
        params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
        expected = generate(plain, prompts, params)
    with LLM(str(tiny_checkpoint), **ENGINE, speculative_config=spec(method)) as llm:
        got = generate(llm, prompts, params)
        stats = llm.engine.stats()
        assert_all_blocks_free(llm.engine)
    assert got == expected
    assert stats.num_spec_accepted_tokens > 0
