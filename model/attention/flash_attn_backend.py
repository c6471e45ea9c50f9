"""Attention through flash-attn's paged-KV kernels (flash-attn >= 2.6, CUDA, fp16/bf16).

Our per-layer cache ``kv_cache[0]`` (K) and ``kv_cache[1]`` (V) are each
[num_blocks, block_size, num_kv_heads, head_dim], which is exactly flash-attn's paged layout,
so the kernels read the cache in place through the block tables; flash-attn needs
``block_size`` to be a multiple of 256 (``resolve_backend_name`` enforces it).

Decode-only batches go to ``flash_attn_with_kvcache`` (one query per sequence, split over the
context when the batch is small); prefill and mixed batches go to ``flash_attn_varlen_func``
with ``cu_seqlens_q`` = ``query_start_loc`` and ``cu_seqlens_k`` = prefix sums of
``seq_lens``. Both align the causal mask bottom-right, so a chunk of new queries at the end of
a longer context sees the whole cached prefix. Example: seq_len 10 with 3 new queries → the
queries sit at positions 7, 8, 9 and query 7 sees keys 0..7.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache

from model.attention import triton_cache
from model.attention.metadata import AttentionMetadata
from model.attention.torch_backend import write_kv as index_write_kv

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


def window_size(sliding_window: int | None) -> tuple[int, int]:
    """flash-attn's (left, right) window: a query sees itself and ``W - 1`` earlier keys,
    none later; (-1, -1) is unlimited."""
    return (sliding_window - 1, 0) if sliding_window is not None else (-1, -1)


def cu_seqlens_k(meta: AttentionMetadata) -> torch.Tensor:
    """[num_seqs + 1] int32 prefix sums of the context lengths, computed once per step.
    Example: seq_lens [7, 3] → [0, 7, 10]."""
    cached = meta.scratch.get("cu_seqlens_k")
    if cached is None:
        sums = torch.cumsum(meta.seq_lens, 0, dtype=torch.int32)
        cached = meta.scratch["cu_seqlens_k"] = F.pad(sums, (1, 0))
    return cached


class FlashAttnBackend:
    name = "flash_attn"
    supports_static_shapes = True  # the decode path reads only device tensors

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        if q.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"attention_backend 'flash_attn' runs in float16 or bfloat16, "
                             f"not {q.dtype}: set dtype='bfloat16' or use 'triton'")
        if meta.static_shapes:
            # Padding rows carry slot -1: the Triton write masks them without a host sync
            # (index_copy_ would fail on the negative index).
            triton_cache.write_kv(kv_cache, k, v, meta.slot_mapping)
        else:
            index_write_kv(kv_cache, k, v, meta.slot_mapping)
        window = window_size(meta.sliding_window)
        # A static batch is decode-only by contract; its host lists are placeholders.
        if meta.static_shapes or meta.is_decode_only:
            out = flash_attn_with_kvcache(
                q.unsqueeze(1), kv_cache[0], kv_cache[1],
                cache_seqlens=meta.seq_lens, block_table=meta.block_tables,
                softmax_scale=scale, causal=True, window_size=window,
            )
            return out.squeeze(1)
        return flash_attn_varlen_func(
            q, kv_cache[0], kv_cache[1],
            cu_seqlens_q=meta.query_start_loc, cu_seqlens_k=cu_seqlens_k(meta),
            max_seqlen_q=meta.max_query_len, max_seqlen_k=meta.max_seq_len,
            softmax_scale=scale, causal=True, window_size=window,
            block_table=meta.block_tables,
        )
