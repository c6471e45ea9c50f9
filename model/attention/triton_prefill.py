"""Paged prefill attention in Triton: a chunk of new tokens attends to the sequence's cached
blocks and to itself (causal, optional sliding window).

The new tokens' K/V are already in the cache when this runs (the backend writes them first),
so every key, old or new, is read through the block table and a chunk on top of a long cached
context is no different from a fresh prompt. One program per (sequence, query tile, KV head):
the tile's rows are (token, head-in-group) pairs, so the K/V tile loaded once serves all query
heads of the group (GQA) and ``tl.dot`` gets a full M even for short chunks.

The grid is sized from the host-side query lengths; programs whose tile lies past their
sequence's chunk, and rows with a single query (decode rows, which the split-K decode kernel
handles better), run no iterations and store nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from model.attention.triton_decode import LOG2E, dim_pad, dot_precision
from model.attention.triton_tile import attend_tile

# Rows of the query tile ((token, head) pairs) and keys per iteration: 64x64 tiles with
# head_dim 128 keep Q, K, V and the fp32 accumulator well inside an H100 SM's registers and
# shared memory with 4 warps.
PREFILL_BLOCK_M = 64
PREFILL_BLOCK_N = 64


@triton.jit
def _prefill_kernel(
    q_ptr, cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_ptr, out_ptr,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_ckv, stride_cb, stride_cs, stride_ch, stride_bt,
    group, head_dim, window, scale_log2,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    GROUP_PAD: tl.constexpr, DIM_PAD: tl.constexpr, HAS_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    TOKENS: tl.constexpr = BLOCK_M // GROUP_PAD
    seq = tl.program_id(0)
    q_tile = tl.program_id(1)
    kv_head = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    q_start = tl.load(query_start_ptr + seq)
    num_queries = tl.load(query_start_ptr + seq + 1) - q_start
    first_pos = seq_len - num_queries  # position of the chunk's first token
    tile_first = q_tile * TOKENS
    active = (num_queries > 1) & (tile_first < num_queries)

    rows = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, DIM_PAD)
    local = tile_first + rows // GROUP_PAD
    head_in_group = rows % GROUP_PAD
    heads = kv_head * group + head_in_group
    # (The interpreter cannot AND the scalar `active` into a block mask; it goes in the bound.)
    row_ok = (local < tl.where(active, num_queries, 0)) & (head_in_group < group)
    dim_ok = dims < head_dim
    query_pos = first_pos + local
    tokens64 = (q_start + local).to(tl.int64)
    q = tl.load(q_ptr + tokens64[:, None] * stride_qt + heads[:, None] * stride_qh
                + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    # Keys this tile can see: up to its last query (causal) and, with a window, from the
    # first query's window start; inactive programs get an empty range.
    hi = tl.where(active, first_pos + tl.minimum(tile_first + TOKENS, num_queries), 0)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(first_pos + tile_first - window + 1, 0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, DIM_PAD], 0.0, tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    head_base = cache_ptr + kv_head * stride_ch
    # One masked loop for every tile: the causal/window masks only bite near the diagonal and
    # the window edge, and a separate unmasked loop would double the code for a few percent.
    for tile in range(lo, hi, BLOCK_N):
        pos = tile + tl.arange(0, BLOCK_N)
        key_ok = pos < hi
        visible = key_ok[None, :] & (pos[None, :] <= query_pos[:, None])
        if HAS_WINDOW:
            visible = visible & (pos[None, :] > query_pos[:, None] - window)
        m_i, l_i, acc = attend_tile(q, m_i, l_i, acc, table, head_base, pos, key_ok, visible,
                                    dims, dim_ok, scale_log2, stride_cb, stride_cs,
                                    stride_ckv, BLOCK_SIZE, DOT_PRECISION)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + tokens64[:, None] * stride_ot + heads[:, None] * stride_oh
             + dims[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])


def paged_prefill(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                  seq_lens: torch.Tensor, query_start_loc: torch.Tensor, out: torch.Tensor,
                  scale: float, sliding_window: int | None, max_query_len: int) -> None:
    """Attend every row with more than one query (a prefill chunk) into ``out``; rows with one
    query are left untouched. ``max_query_len`` (from the host lists) sizes the grid."""
    num_seqs = seq_lens.shape[0]
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = kv_cache.shape[3]
    group = num_heads // num_kv_heads
    group_pad = triton.next_power_of_2(group)
    block_m = max(PREFILL_BLOCK_M, group_pad)
    tokens_per_tile = block_m // group_pad
    if num_seqs == 0 or max_query_len < 2:
        return
    grid = (num_seqs, triton.cdiv(max_query_len, tokens_per_tile), num_kv_heads)
    _prefill_kernel[grid](
        q, kv_cache, block_tables, seq_lens, query_start_loc, out,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        block_tables.stride(0),
        group, head_dim, sliding_window or 0, scale * LOG2E,
        BLOCK_SIZE=kv_cache.shape[2], BLOCK_M=block_m, BLOCK_N=PREFILL_BLOCK_N,
        GROUP_PAD=group_pad, DIM_PAD=dim_pad(head_dim), HAS_WINDOW=sliding_window is not None,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=4, num_stages=2,
    )
