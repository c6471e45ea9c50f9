"""Attention on the CPU: decode reads the paged KV cache in place, prefill runs SDPA's kernel.

Rows with a few query tokens (decode, and draft verification) go to the C kernel in
``cpu_paged_attention.c`` in one call per layer: it walks each sequence's block table, so a
row costs its own context length and nothing is copied. Rows with many query tokens (prefill
chunks) are matmul-bound, where SDPA's blocked kernel wins: they take the torch reference's
path, except that a cached prefix is gathered a whole block at a time (one ``index_select``)
instead of token by token. The torch reference stays the oracle: the tests hold this
backend's tokens to it and to HF.
"""

from __future__ import annotations

import torch

from model.attention.cpu_kernel import load_kernel, paged_attention
from model.attention.metadata import AttentionMetadata
from model.attention.torch_backend import TorchAttentionBackend, write_kv

# Rows with at most this many query tokens run in the paged kernel; longer ones through SDPA.
# A decode row has 1, a row verifying k draft tokens k + 1.
KERNEL_MAX_QUERIES = 8


def plan_rows(meta: AttentionMetadata) -> tuple[torch.Tensor | None, list[tuple[int, int]]]:
    """The kernel's rows as int64 [4, n] (table row, query start, query length, sequence
    length), and (row, query start) of the rows left for SDPA.

    Example: query_lens_host [1, 40, 3], seq_lens_host [9, 40, 20] → kernel rows
    [[0, 2], [0, 41], [1, 3], [9, 20]], SDPA rows [(1, 1)].
    """
    starts = meta.query_start_loc.tolist()
    short, long = [], []
    for s, num_queries in enumerate(meta.query_lens_host):
        if 0 < num_queries <= KERNEL_MAX_QUERIES:
            short.append((s, starts[s], num_queries, meta.seq_lens_host[s]))
        elif num_queries > KERNEL_MAX_QUERIES:
            long.append((s, starts[s]))
    if not short:
        return None, long
    return torch.tensor(short, dtype=torch.int64).t().contiguous(), long


def gather_blocks(cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
    """[length, kv_heads, head_dim]: one sequence's first ``length`` cached tokens, copied a
    whole block at a time (``table``: its block ids)."""
    block_size = cache.shape[1]
    blocks = table[:-(-length // block_size)].long()
    return cache.index_select(0, blocks).flatten(0, 1)[:length]


class CpuAttentionBackend(TorchAttentionBackend):
    name = "cpu"
    supports_static_shapes = False  # plans its rows from the host lists

    def __init__(self) -> None:
        self.kernel = load_kernel()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        if self.kernel is None or kv_cache.dtype != torch.float32 or q.stride(-1) != 1:
            return super().forward(q, k, v, kv_cache, meta, scale)
        write_kv(kv_cache, k, v, meta.slot_mapping)
        plan = meta.scratch.get("cpu_rows")
        if plan is None:
            plan = meta.scratch["cpu_rows"] = plan_rows(meta)
        rows, long_rows = plan
        out = torch.empty_like(q)
        if rows is not None:
            paged_attention(self.kernel, q, kv_cache, meta.block_tables, rows, out, scale,
                            meta.sliding_window)
        for s, start in long_rows:
            self._prefill(q, k, v, kv_cache, meta, s, start, out, scale)
        return out

    def _context(self, cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
        return gather_blocks(cache, table[0], length).unsqueeze(0)
