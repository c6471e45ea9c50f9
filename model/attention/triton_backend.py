"""Attention over the paged KV cache with Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1).

A step runs up to three kernels: the K/V write (``triton_cache``), split-K decode for rows with
one query (``triton_decode``) and tiled prefill for rows with several (``triton_prefill``).
A mixed batch runs both attention kernels over all rows, each skipping the other's rows on
the device: decode rows want the GQA-packed, split-K kernel (one query cannot fill a prefill
tile, and a long context needs splitting to use the GPU), while a chunk of many queries wants
query tiles; routing on the device keeps the host from building per-kind index tensors.
"""

from __future__ import annotations

import functools

import torch

from model.attention.metadata import AttentionMetadata
from model.attention.triton_cache import write_kv
from model.attention.triton_decode import MIN_TOKENS_PER_SPLIT, choose_num_splits, paged_decode
from model.attention.triton_prefill import paged_prefill

# Under the interpreter every program runs on the CPU one after another: a handful of splits
# still exercises split-K without multiplying the work.
INTERPRETER_SMS = 4


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


class TritonAttentionBackend:
    name = "triton"
    supports_static_shapes = True

    def __init__(self, num_sms: int | None = None,
                 min_tokens_per_split: int = MIN_TOKENS_PER_SPLIT) -> None:
        """``num_sms`` and ``min_tokens_per_split`` steer how many splits a decode context gets
        (defaults: the device's SM count, 256 tokens); tests lower them to force split-K."""
        self.num_sms = num_sms
        self.min_tokens_per_split = min_tokens_per_split

    def _num_splits(self, programs: int, max_context: int, sliding_window: int | None,
                    device: torch.device) -> int:
        if sliding_window is not None:
            max_context = min(max_context, sliding_window)
        sms = self.num_sms if self.num_sms is not None else _num_sms(device)
        return choose_num_splits(programs, max_context, sms, self.min_tokens_per_split)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        write_kv(kv_cache, k, v, meta.slot_mapping)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if q.shape[0] == 0:
            return out
        num_kv_heads = kv_cache.shape[3]
        block_size = kv_cache.shape[2]
        if meta.static_shapes:
            # Everything below comes from tensor shapes, fixed for a captured graph.
            batch = meta.seq_lens.shape[0]
            if q.shape[0] != batch:
                raise ValueError(f"a static-shape batch is decode only: {q.shape[0]} query "
                                 f"tokens for {batch} sequences")
            splits = self._num_splits(batch * num_kv_heads,
                                      meta.block_tables.shape[1] * block_size,
                                      meta.sliding_window, q.device)
            paged_decode(q, kv_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
                         out, scale, meta.sliding_window, splits, mixed=False)
            return out

        plan = meta.scratch.get("triton")
        if plan is None:
            # Same for every layer of the step: scan the host lists once.
            decode_lens = [n for q_len, n in zip(meta.query_lens_host, meta.seq_lens_host,
                                                 strict=True) if q_len == 1]
            mixed = len(decode_lens) != len(meta.query_lens_host)
            splits = self._num_splits(len(decode_lens) * num_kv_heads, max(decode_lens, default=0),
                                      meta.sliding_window, q.device)
            plan = meta.scratch["triton"] = (bool(decode_lens), mixed, splits, meta.max_query_len)
        has_decode, mixed, splits, max_query_len = plan
        if has_decode:
            paged_decode(q, kv_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
                         out, scale, meta.sliding_window, splits, mixed=mixed)
        if mixed:
            paged_prefill(q, kv_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
                          out, scale, meta.sliding_window, max_query_len)
        return out
