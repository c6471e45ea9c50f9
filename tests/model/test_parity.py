"""Logits parity with HF transformers' MistralForCausalLM on tiny random checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.factory import build_model
from model.kv_cache import KVCacheSpec, allocate_kv_cache
from model.random_checkpoint import save_hf_checkpoint, tiny_mistral_config
from model.runner import build_step_tensors
from model.step import ScheduledSequence, StepInput

BLOCK_SIZE = 16


def prefill_logits(model, token_ids: list[int], num_blocks: int = 16) -> torch.Tensor:
    spec = KVCacheSpec.for_model(model.config, model.ctx, BLOCK_SIZE, torch.float32)
    caches = allocate_kv_cache(spec, num_blocks, torch.device("cpu"))
    # A scattered, non-contiguous block table exercises the slot arithmetic.
    table = list(range(num_blocks))[::-1]
    step = StepInput([ScheduledSequence("r", token_ids, 0, table, True)])
    tensors = build_step_tensors(step, BLOCK_SIZE, model.config.sliding_window,
                                 torch.device("cpu"))
    with torch.inference_mode():
        hidden = model(tensors.input_ids, tensors.positions, caches, tensors.meta)
        return model.compute_logits(hidden)


@pytest.mark.parametrize("variant", ["v0.2", "v0.1-window"])
def test_prefill_logits_match_hf(tmp_path: Path, variant: str) -> None:
    overrides = {} if variant == "v0.2" else {"sliding_window": 24, "rope_theta": 1e4}
    config = tiny_mistral_config(**overrides)
    hf_model = save_hf_checkpoint(tmp_path, config)
    ours = build_model(tmp_path, dtype="float32")
    assert ours.config.sliding_window == overrides.get("sliding_window")
    tokens = torch.randint(3, config.vocab_size, (64,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(tokens.unsqueeze(0)).logits[0]
    actual = prefill_logits(ours, tokens.tolist())
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= 1e-4
