"""One tile of online-softmax attention over the paged KV cache, shared by the decode and
prefill kernels.

The caller picks the tile's key positions and which (row, key) pairs are visible (decode: every
key in range; prefill: also causal and window); this loads the tile's K and V through the block
table and folds it into the running max ``m_i`` (log2 domain), sum ``l_i`` and accumulator.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_tile(q, m_i, l_i, acc, table, head_base, pos, key_ok, visible, dims, dim_ok,
                scale_log2, stride_cb, stride_cs, stride_ckv,
                BLOCK_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    page = tl.load(table + pos // BLOCK_SIZE, mask=key_ok, other=0).to(tl.int64)
    offs = page * stride_cb + (pos % BLOCK_SIZE) * stride_cs
    k_t = tl.load(head_base + offs[None, :] + dims[:, None],
                  mask=key_ok[None, :] & dim_ok[:, None], other=0.0)
    qk = tl.dot(q, k_t, input_precision=DOT_PRECISION) * scale_log2
    qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    # A row can see nothing in a tile (window edge, a padding row): keep its max finite so
    # exp2 gives 0 instead of exp2(-inf + inf) = NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(qk - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(head_base + stride_ckv + offs[:, None] + dims[None, :],
                mask=key_ok[:, None] & dim_ok[None, :], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc
