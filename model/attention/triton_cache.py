"""Triton kernel that stores this step's K and V into the paged cache.

One program per new token copies all of its KV heads (K and V) to the token's slot. A slot
below zero marks a padding row of a CUDA-graph batch: the program masks every store, so the
cache is untouched and no host-side filtering (which would need a sync) is required.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_ckv, stride_cb, stride_cs, stride_ch,
    num_kv_heads, head_dim,
    BLOCK_SIZE: tl.constexpr, HEADS_PAD: tl.constexpr, DIM_PAD: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    heads = tl.arange(0, HEADS_PAD)
    dims = tl.arange(0, DIM_PAD)
    # A padding slot writes no head. (The interpreter cannot AND a scalar condition into a
    # block mask, so the condition goes into the bound instead.)
    heads_to_write = tl.where(slot >= 0, num_kv_heads, 0)
    valid = (heads[:, None] < heads_to_write) & (dims[None, :] < head_dim)
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    dst = cache_ptr + block * stride_cb + offset * stride_cs + heads[:, None] * stride_ch \
        + dims[None, :]
    key = tl.load(k_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :],
                  mask=valid)
    value = tl.load(v_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :],
                    mask=valid)
    tl.store(dst, key, mask=valid)
    tl.store(dst + stride_ckv, value, mask=valid)


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store each new token's K and V at its slot; slots < 0 are skipped.

    ``kv_cache``: [2, num_blocks, block_size, num_kv_heads, head_dim] with a contiguous last
    dimension; ``k``/``v``: [num_tokens, num_kv_heads, head_dim] (views of the fused QKV
    projection are fine as long as the head dimension is contiguous).
    """
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    for name, tensor in (("k", k), ("v", v), ("kv_cache", kv_cache)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} needs a contiguous head dimension")
    _write_kv_kernel[(num_tokens,)](
        k, v, kv_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        num_kv_heads, head_dim,
        BLOCK_SIZE=kv_cache.shape[2],
        HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        DIM_PAD=triton.next_power_of_2(head_dim),
    )
