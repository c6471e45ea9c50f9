"""Paged K/V tensors: one [2, num_blocks, block_size, num_kv_heads, head_dim] tensor per layer.

Sizing example (Mistral-7B, bf16, tp=2): per token and rank, 2 (K,V) x 32 layers x 4 KV heads
x 128 x 2 bytes = 64 KiB; a 16-token block is 1 MiB, so 20 GiB of budget holds 20,480 blocks
(327,680 tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.config import ModelConfig
from model.layers.linear import qkv_shards
from model.parallel import ParallelContext


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int  # on this rank
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @classmethod
    def for_model(cls, config: ModelConfig, ctx: ParallelContext, block_size: int,
                  dtype: torch.dtype) -> KVCacheSpec:
        kv_rows = qkv_shards(config.head_dim, config.num_attention_heads,
                             config.num_key_value_heads, ctx)[1].size
        return cls(config.num_hidden_layers, kv_rows // config.head_dim, config.head_dim,
                   block_size, dtype)

    @property
    def bytes_per_block(self) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * element

    def num_blocks_for(self, budget_bytes: int) -> int:
        return budget_bytes // self.bytes_per_block


def allocate_kv_cache(spec: KVCacheSpec, num_blocks: int, device: torch.device
                      ) -> list[torch.Tensor]:
    if num_blocks < 1:
        raise ValueError(f"the KV cache budget holds {num_blocks} blocks of "
                         f"{spec.bytes_per_block} bytes; give it at least one block")
    shape = (2, num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
    return [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]


# Off CUDA the KV cache shares host memory with everything else: by default it takes at most
# this much (and at most a quarter of what is available).
DEFAULT_CPU_KV_BYTES = 1 << 30


def available_memory(device: torch.device) -> int:
    """Free bytes on the device now (after the weights are loaded)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return DEFAULT_CPU_KV_BYTES


def kv_budget_bytes(memory: int | float | None, device: torch.device) -> int:
    """The KV budget of one rank: an int is bytes, a float a fraction of the free memory,
    None the device's default (90% of free GPU memory; on CPU the smaller of 1 GiB and a
    quarter of what is available)."""
    if isinstance(memory, float):
        return int(available_memory(device) * memory)
    if isinstance(memory, int):
        return memory
    if device.type == "cuda":
        return int(available_memory(device) * 0.9)
    return min(DEFAULT_CPU_KV_BYTES, available_memory(device) // 4)
