"""The interface every attention backend implements, and how one is chosen."""

from __future__ import annotations

import importlib.util
from typing import Protocol

import torch

from model.attention.metadata import AttentionMetadata


class AttentionBackend(Protocol):
    """Writes this step's K/V into the paged cache and attends over each sequence's context.

    ``q``: [num_tokens, num_heads, head_dim]; ``k``/``v``: [num_tokens, num_kv_heads, head_dim];
    ``kv_cache``: [2, num_blocks, block_size, num_kv_heads, head_dim] (K then V).
    Returns [num_tokens, num_heads, head_dim].
    """

    name: str

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        ...


BACKEND_NAMES = ("auto", "torch", "triton", "flash_attn")


def resolve_backend_name(requested: str, device: torch.device) -> str:
    """``auto`` picks flash_attn when installed on CUDA, else torch."""
    if requested not in BACKEND_NAMES:
        raise ValueError(f"attention_backend must be one of {', '.join(BACKEND_NAMES)}, "
                         f"got {requested!r}")
    if requested != "auto":
        if requested != "torch" and device.type != "cuda":
            raise ValueError(f"attention_backend {requested!r} needs a CUDA device; "
                             "use 'torch' on CPU")
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attn"
    return "torch"


def create_backend(name: str, device: torch.device) -> AttentionBackend:
    resolved = resolve_backend_name(name, device)
    if resolved == "torch":
        from model.attention.torch_backend import TorchAttentionBackend

        return TorchAttentionBackend()
    raise ValueError(f"attention backend {resolved!r} is not available in this build; "
                     "use attention_backend='torch'")
