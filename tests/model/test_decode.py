"""Decoding token by token through the paged cache equals one prefill."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.factory import build_model
from model.kv_cache import KVCacheSpec, allocate_kv_cache
from model.random_checkpoint import save_hf_checkpoint, tiny_mistral_config
from model.runner import build_step_tensors
from model.step import ScheduledSequence, StepInput
from tests.model.test_parity import prefill_logits

BLOCK_SIZE = 16


def run(model, caches, sequences: list[ScheduledSequence]) -> torch.Tensor:
    tensors = build_step_tensors(StepInput(sequences), BLOCK_SIZE, model.config.sliding_window,
                                 torch.device("cpu"))
    with torch.inference_mode():
        hidden = model(tensors.input_ids, tensors.positions, caches, tensors.meta)
        return model.compute_logits(hidden[tensors.logits_indices])


@pytest.mark.parametrize("window", [None, 20])
def test_decode_equals_prefill_across_blocks(tmp_path: Path, window: int | None) -> None:
    save_hf_checkpoint(tmp_path, tiny_mistral_config(sliding_window=window))
    model = build_model(tmp_path, dtype="float32")
    tokens = torch.randint(3, 320, (50,), generator=torch.Generator().manual_seed(2)).tolist()
    expected = prefill_logits(model, tokens)

    spec = KVCacheSpec.for_model(model.config, model.ctx, BLOCK_SIZE, torch.float32)
    caches = allocate_kv_cache(spec, 12, torch.device("cpu"))
    table = [7, 3, 11, 0]  # 4 blocks hold 64 tokens; deliberately out of order
    # A 5-token prefill, then a chunk that crosses the first block boundary, then decode.
    got = [run(model, caches, [ScheduledSequence("a", tokens[:5], 0, table, True)])]
    got.append(run(model, caches, [ScheduledSequence("a", tokens[5:18], 5, table, True)]))
    for t in range(18, len(tokens)):
        got.append(run(model, caches, [ScheduledSequence("a", [tokens[t]], t, table, True)]))
    actual = torch.cat(got)
    sampled_rows = [4, 17, *range(18, len(tokens))]
    assert (actual - expected[sampled_rows]).abs().max().item() <= 1e-4


def test_batched_decode_of_different_lengths_matches_alone(tmp_path: Path) -> None:
    """Decode rows of different context lengths batched in one step see only their own KV."""
    save_hf_checkpoint(tmp_path, tiny_mistral_config())
    model = build_model(tmp_path, dtype="float32")
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 320, (n,), generator=gen).tolist() for n in (7, 33, 16)]
    spec = KVCacheSpec.for_model(model.config, model.ctx, BLOCK_SIZE, torch.float32)
    caches = allocate_kv_cache(spec, 12, torch.device("cpu"))
    tables = [[0, 1], [2, 3, 4], [5, 6]]
    prefill = [ScheduledSequence(str(i), p[:-1], 0, tables[i], False)
               for i, p in enumerate(prompts)]
    run(model, caches, prefill)
    decode = [ScheduledSequence(str(i), p[-1:], len(p) - 1, tables[i], True)
              for i, p in enumerate(prompts)]
    # One mixed step: a prefill chunk beside the decodes must not disturb them.
    batched = run(model, caches, decode)
    for i, prompt in enumerate(prompts):
        expected = prefill_logits(model, prompt)[-1]
        assert (batched[i] - expected).abs().max().item() <= 1e-4
