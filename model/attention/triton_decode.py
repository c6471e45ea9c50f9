"""Paged decode attention in Triton: one query token per sequence, split-K over the context.

One program per (sequence, KV head, split) loads each K/V tile once and uses it for every query
head that shares the KV head (GQA): the group's heads are the rows of the ``tl.dot``, padded
to 16 rows because that is the smallest M the tensor cores take. Decode is bound by reading
the cache, so the padded rows cost nothing that matters while the shared loads save
``group``-fold bandwidth.

A long context alone gives too few programs to fill the GPU (batch x KV heads may be 8), so
the context is cut into ``num_splits`` contiguous ranges; each program writes its running max
(log2 domain), sum of exponentials and unnormalised accumulator, and a small kernel merges the
splits with log-sum-exp. With one split the decode kernel normalises and writes the output
itself.

Tokens of a tile are addressed one by one through the block table (``pos // block_size``), so a
tile may span several pages and any power-of-two block size works.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from model.attention.triton_tile import attend_tile

LOG2E = math.log2(math.e)
# Tokens per loop iteration; 4 pages of the default 16-token block.
DECODE_BLOCK_N = 64
# A split shorter than this spends more on its partial results than it saves in parallelism.
MIN_TOKENS_PER_SPLIT = 256
MAX_SPLITS = 64


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs would otherwise go through TF32 on the GPU (10-bit mantissa), too coarse to
    agree with the fp32 reference; 16-bit inputs are exact in either mode."""
    return "ieee" if dtype == torch.float32 else "tf32"


def dim_pad(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def choose_num_splits(programs: int, max_context: int, num_sms: int,
                      min_tokens_per_split: int = MIN_TOKENS_PER_SPLIT) -> int:
    """A power of two (few kernel specialisations) giving about two programs per SM, never
    splits shorter than ``min_tokens_per_split``. Depends only on its arguments, so a CUDA
    graph captured for a shape always replays with the same split count."""
    if programs <= 0 or max_context <= min_tokens_per_split:
        return 1
    wanted = triton.cdiv(2 * num_sms, programs)
    useful = triton.cdiv(max_context, min_tokens_per_split)
    splits = max(1, min(wanted, useful, MAX_SPLITS))
    return 1 << (splits.bit_length() - 1)


@triton.jit
def _decode_kernel(
    q_ptr, cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_ptr,
    out_ptr, part_m_ptr, part_l_ptr, part_acc_ptr,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_ckv, stride_cb, stride_cs, stride_ch, stride_bt,
    num_heads, group, head_dim, window, scale_log2,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_PAD: tl.constexpr,
    DIM_PAD: tl.constexpr, NUM_SPLITS: tl.constexpr, MIXED: tl.constexpr,
    HAS_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    if MIXED:
        # Prefill rows of a mixed batch belong to the prefill kernel: give them an empty context
        # here instead of returning early, and mask their stores.
        token = tl.load(query_start_ptr + seq)
        is_decode = (tl.load(query_start_ptr + seq + 1) - token) == 1
        seq_len = tl.where(is_decode, seq_len, 0)
        # The interpreter cannot AND a scalar condition into a block mask, so it goes into
        # the bound of the rows to store.
        rows_to_store = tl.where(is_decode, group, 0)
    else:
        # Decode-only batches (static ones included) hold token s for sequence s, so
        # query_start_loc is not needed and a padded batch's encoding of it does not matter.
        token = seq
        rows_to_store = group

    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(seq_len - window, 0)
    # Whole tiles per split, so no two splits load the same tile.
    per_split = (seq_len - lo + NUM_SPLITS - 1) // NUM_SPLITS
    per_split = (per_split + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, seq_len)

    rows = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, DIM_PAD)
    heads = kv_head * group + rows
    row_ok = rows < rows_to_store
    dim_ok = dims < head_dim
    token64 = token.to(tl.int64)
    q = tl.load(q_ptr + token64 * stride_qt + heads[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.full([GROUP_PAD], 0.0, tl.float32)
    acc = tl.full([GROUP_PAD, DIM_PAD], 0.0, tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    head_base = cache_ptr + kv_head * stride_ch
    for tile in range(start, end, BLOCK_N):
        pos = tile + tl.arange(0, BLOCK_N)
        key_ok = pos < end
        m_i, l_i, acc = attend_tile(q, m_i, l_i, acc, table, head_base, pos, key_ok,
                                    key_ok[None, :], dims, dim_ok, scale_log2, stride_cb,
                                    stride_cs, stride_ckv, BLOCK_SIZE, DOT_PRECISION)

    if NUM_SPLITS == 1:
        # l_i is 0 only for an empty context (a padding row): write zeros, not 0/0.
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + token64 * stride_ot + heads[:, None] * stride_oh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & dim_ok[None, :])
    else:
        # Written for prefill rows of a mixed batch too (as an empty split), so that the merge
        # kernel never reads uninitialised memory.
        in_group = rows < group
        part = (seq.to(tl.int64) * num_heads + heads) * NUM_SPLITS + split
        tl.store(part_m_ptr + part, m_i, mask=in_group)
        tl.store(part_l_ptr + part, l_i, mask=in_group)
        tl.store(part_acc_ptr + part[:, None] * DIM_PAD + dims[None, :], acc,
                 mask=in_group[:, None])


@triton.jit
def _merge_splits_kernel(
    part_m_ptr, part_l_ptr, part_acc_ptr, query_start_ptr, out_ptr,
    stride_ot, stride_oh, num_heads, head_dim,
    DIM_PAD: tl.constexpr, NUM_SPLITS: tl.constexpr, MIXED: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    if MIXED:
        token = tl.load(query_start_ptr + seq)
        is_decode = (tl.load(query_start_ptr + seq + 1) - token) == 1
        dims_to_store = tl.where(is_decode, head_dim, 0)
    else:
        token = seq
        dims_to_store = head_dim
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, DIM_PAD)
    part = (seq.to(tl.int64) * num_heads + head) * NUM_SPLITS + splits
    m = tl.load(part_m_ptr + part)
    l_s = tl.load(part_l_ptr + part)
    acc = tl.load(part_acc_ptr + part[:, None] * DIM_PAD + dims[None, :])
    m_max = tl.max(m, 0)
    # Empty splits carry m = -inf and weigh 0; if all are empty (seq_len 0) the output is 0.
    weight = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))
    total = tl.sum(weight * l_s, 0)
    out = tl.sum(acc * weight[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + token.to(tl.int64) * stride_ot + head * stride_oh + dims,
             out.to(out_ptr.dtype.element_ty), mask=dims < dims_to_store)


def paged_decode(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                 seq_lens: torch.Tensor, query_start_loc: torch.Tensor, out: torch.Tensor,
                 scale: float, sliding_window: int | None, num_splits: int, mixed: bool) -> None:
    """Attend the single query of each decode row over its cached context into ``out``.

    ``mixed``: the batch also holds prefill rows; the query of sequence s is then token
    ``query_start_loc[s]`` and rows whose query length is not 1 are left untouched. Otherwise
    sequence s's query is token s. ``num_splits`` must be a power of two.
    """
    num_seqs = seq_lens.shape[0]
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = kv_cache.shape[3]
    group = num_heads // num_kv_heads
    if num_seqs == 0:
        return
    padded_dim = dim_pad(head_dim)
    if num_splits > 1:
        part_m = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32,
                             device=q.device)
        part_l = torch.empty_like(part_m)
        part_acc = torch.empty((num_seqs, num_heads, num_splits, padded_dim),
                               dtype=torch.float32, device=q.device)
    else:
        part_m = part_l = part_acc = out  # unused: the kernel writes the output directly
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, kv_cache, block_tables, seq_lens, query_start_loc,
        out, part_m, part_l, part_acc,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        block_tables.stride(0),
        num_heads, group, head_dim, sliding_window or 0, scale * LOG2E,
        BLOCK_SIZE=kv_cache.shape[2], BLOCK_N=DECODE_BLOCK_N,
        GROUP_PAD=max(16, triton.next_power_of_2(group)), DIM_PAD=padded_dim,
        NUM_SPLITS=num_splits, MIXED=mixed, HAS_WINDOW=sliding_window is not None,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=4,
    )
    if num_splits > 1:
        _merge_splits_kernel[(num_seqs, num_heads)](
            part_m, part_l, part_acc, query_start_loc, out,
            out.stride(0), out.stride(1), num_heads, head_dim,
            DIM_PAD=padded_dim, NUM_SPLITS=num_splits, MIXED=mixed,
            num_warps=1 if padded_dim <= 64 else 2,
        )
