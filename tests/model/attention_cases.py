"""Paged-attention cases shared by the backend tests: random batches on a shuffled block
table, and the torch reference's answer for them (the oracle every backend is held to)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.attention.metadata import AttentionMetadata
from model.attention.torch_backend import TorchAttentionBackend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

SCALE = 0.17
# Relative to the largest reference value. fp16 inputs are compared with an fp32 reference
# computed from the same (rounded) values, so the error is the kernel's own.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def device_tensor(values: list[int] | list[list[int]], dtype: torch.dtype,
                  device: torch.device = DEVICE) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


@dataclass
class Case:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    cache: torch.Tensor  # random everywhere: stale or cached K/V, whatever a slot holds
    query_lens: list[int]
    seq_lens: list[int]
    tables: list[list[int]]
    slots: list[int]
    block_size: int
    window: int | None

    def meta(self, **overrides: Any) -> AttentionMetadata:
        starts = [0]
        for n in self.query_lens:
            starts.append(starts[-1] + n)
        device = self.cache.device
        values: dict[str, Any] = dict(
            query_start_loc=device_tensor(starts, torch.int32, device),
            seq_lens=device_tensor(self.seq_lens, torch.int32, device),
            block_tables=device_tensor(self.tables, torch.int32, device),
            slot_mapping=device_tensor(self.slots, torch.int64, device),
            query_lens_host=list(self.query_lens), seq_lens_host=list(self.seq_lens),
            block_size=self.block_size, sliding_window=self.window,
        )
        values.update(overrides)
        return AttentionMetadata(**values)


def make_case(seqs: list[tuple[int, int]], heads: int, kv_heads: int, head_dim: int,
              block_size: int = 16, dtype: torch.dtype = torch.float32,
              window: int | None = None, seed: int = 0, spare_columns: int = 1,
              device: torch.device = DEVICE) -> Case:
    """``seqs``: (tokens already cached, new tokens) per sequence. Blocks are handed out in a
    shuffled order and the tables carry spare zero columns, like a real block manager's."""
    gen = torch.Generator().manual_seed(seed)
    query_lens = [new for _, new in seqs]
    seq_lens = [cached + new for cached, new in seqs]
    need = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(need) + 3
    order = torch.randperm(num_blocks, generator=gen).tolist()
    width = max(need, default=0) + spare_columns
    tables, slots, used = [], [], 0
    for (cached, new), n in zip(seqs, need, strict=True):
        table = order[used:used + n]
        used += n
        slots.extend(table[p // block_size] * block_size + p % block_size
                     for p in range(cached, cached + new))
        tables.append(table + [0] * (width - n))
    tokens = sum(query_lens)
    # q, k and v as views of one fused projection, as the model hands them over (strided).
    fused = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=gen)
    fused = fused.to(device, dtype)
    q, k, v = fused.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], -1)
    cache = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, generator=gen)
    cache = cache.to(device, dtype)
    return Case(q.view(tokens, heads, head_dim), k.view(tokens, kv_heads, head_dim),
                v.view(tokens, kv_heads, head_dim), cache, query_lens, seq_lens, tables, slots,
                block_size, window)


def reference(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    cache = case.cache.float().clone()
    out = TorchAttentionBackend().forward(case.q.float(), case.k.float(), case.v.float(), cache,
                                          case.meta(), SCALE)
    return out, cache


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected).abs().max() / expected.abs().max()).item()


def model_logits(checkpoint: Path, backend: str, device: torch.device) -> torch.Tensor:
    """[7, vocab] logits of a checkpoint through one backend: a prefill, a mixed step (a
    decode beside a second prompt's first chunk), its second chunk, then batched decodes."""
    from model.factory import build_model
    from model.kv_cache import KVCacheSpec, allocate_kv_cache
    from model.runner import build_step_tensors
    from model.step import ScheduledSequence, StepInput

    gen = torch.Generator().manual_seed(7)
    prompt_a = torch.randint(3, 32000, (21,), generator=gen).tolist()
    prompt_b = torch.randint(3, 32000, (30,), generator=gen).tolist()
    table_a, table_b = [4, 1], [0, 6, 3]
    steps = [
        [ScheduledSequence("a", prompt_a, 0, table_a, True)],
        [ScheduledSequence("a", [11], 21, table_a, True),
         ScheduledSequence("b", prompt_b[:18], 0, table_b, True)],
        [ScheduledSequence("a", [12], 22, table_a, True),
         ScheduledSequence("b", prompt_b[18:], 18, table_b, True)],
        [ScheduledSequence("a", [13], 23, table_a, True),
         ScheduledSequence("b", [14], 30, table_b, True)],
    ]
    model = build_model(checkpoint, dtype="float32", device=device, attention_backend=backend)
    assert model.layers[0].self_attn.backend.name == backend
    spec = KVCacheSpec.for_model(model.config, model.ctx, 16, torch.float32)
    caches = allocate_kv_cache(spec, 8, device)
    outputs = []
    for sequences in steps:
        tensors = build_step_tensors(StepInput(sequences), 16, model.config.sliding_window,
                                     device)
        with torch.inference_mode():
            hidden = model(tensors.input_ids, tensors.positions, caches, tensors.meta)
            outputs.append(model.compute_logits(hidden[tensors.logits_indices]))
    return torch.cat(outputs)
