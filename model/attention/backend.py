"""The interface every attention backend implements, and how one is chosen."""

from __future__ import annotations

import importlib.util
import os
from typing import Protocol

import torch

from model.attention.metadata import AttentionMetadata


class AttentionBackend(Protocol):
    """Writes this step's K/V into the paged cache and attends over each sequence's context.

    ``q``: [num_tokens, num_heads, head_dim]; ``k``/``v``: [num_tokens, num_kv_heads, head_dim];
    ``kv_cache``: [2, num_blocks, block_size, num_kv_heads, head_dim] (K then V).
    Returns [num_tokens, num_heads, head_dim].

    ``supports_static_shapes``: the backend can run a decode batch whose metadata has
    ``static_shapes=True`` (see :class:`AttentionMetadata`) without reading the host lists or
    syncing with the device, which is what capturing it in a CUDA graph needs.
    """

    name: str
    supports_static_shapes: bool

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        ...


BACKEND_NAMES = ("auto", "torch", "cpu", "triton", "flash_attn")

# flash-attn's paged KV cache takes pages of a multiple of 256 tokens.
FLASH_ATTN_BLOCK_MULTIPLE = 256


def triton_interpreted() -> bool:
    """TRITON_INTERPRET=1 runs Triton kernels on CPU tensors (slowly): how the kernels are
    tested on machines without a GPU."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_backend_name(requested: str, device: torch.device, block_size: int = 16) -> str:
    """``auto``: on CUDA, flash_attn when installed and ``block_size`` suits its paged cache,
    else triton when installed, else torch; on CPU, cpu (the paged C kernel)."""
    if requested not in BACKEND_NAMES:
        raise ValueError(f"attention_backend must be one of {', '.join(BACKEND_NAMES)}, "
                         f"got {requested!r}")
    if requested == "flash_attn":
        if device.type != "cuda":
            raise ValueError("attention_backend 'flash_attn' needs a CUDA device; "
                             "use 'torch' on CPU")
        if not _installed("flash_attn"):
            raise ValueError("attention_backend 'flash_attn' needs the flash-attn package: "
                             "pip install '.[gpu]', or use 'triton'")
        if block_size % FLASH_ATTN_BLOCK_MULTIPLE:
            raise ValueError(f"attention_backend 'flash_attn' needs block_size to be a multiple "
                             f"of {FLASH_ATTN_BLOCK_MULTIPLE} (its paged KV cache), got "
                             f"{block_size}: set block_size=256 or use 'triton'")
        return requested
    if requested == "triton":
        if device.type != "cuda" and not triton_interpreted():
            raise ValueError("attention_backend 'triton' needs a CUDA device (or "
                             "TRITON_INTERPRET=1 to run its kernels slowly on CPU); "
                             "use 'torch' on CPU")
        if not _installed("triton"):
            raise ValueError("attention_backend 'triton' needs the triton package "
                             "(pip install triton), or use 'torch'")
        return requested
    if requested == "cpu":
        if device.type != "cpu":
            raise ValueError("attention_backend 'cpu' runs on CPU tensors; on CUDA use "
                             "'auto', 'triton', 'flash_attn' or 'torch'")
        return requested
    if requested == "torch":
        return "torch"
    if device.type != "cuda":
        return "cpu"
    if _installed("flash_attn") and block_size % FLASH_ATTN_BLOCK_MULTIPLE == 0:
        return "flash_attn"
    if _installed("triton"):
        return "triton"
    return "torch"


def create_backend(name: str, device: torch.device, block_size: int = 16) -> AttentionBackend:
    resolved = resolve_backend_name(name, device, block_size)
    if resolved == "triton":
        from model.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    if resolved == "flash_attn":
        from model.attention.flash_attn_backend import FlashAttnBackend

        return FlashAttnBackend()
    if resolved == "cpu":
        from model.attention.cpu_backend import CpuAttentionBackend

        return CpuAttentionBackend()
    from model.attention.torch_backend import TorchAttentionBackend

    return TorchAttentionBackend()
