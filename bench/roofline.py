"""Device ceilings for the serving benchmark: copy bandwidth, matmul rate, weight bytes.

Batch-1 decode reads every weight once per token, so its ceiling is bandwidth / weight bytes
(Mistral-7B in bf16: 7.24e9 parameters x 2 bytes = 14.48 GB; at ~3 TB/s about 200 tok/s).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from model.config import ModelConfig


def sync(device: torch.device) -> None:
    """Wait for queued kernels: CUDA calls return before the work is done, so a timer read
    without this measures the launch, not the kernel."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_seconds(call: Callable[[], object], device: torch.device, iters: int,
                  warmup: int) -> float:
    """Mean seconds per call after ``warmup`` untimed calls (clocks, allocator, autotuning)."""
    for _ in range(warmup):
        call()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        call()
    sync(device)
    return (time.perf_counter() - start) / iters


@dataclass(frozen=True)
class WeightCount:
    embedding: int
    lm_head: int
    per_layer: int
    num_layers: int
    final_norm: int

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.per_layer * self.num_layers + \
            self.final_norm

    @property
    def read_per_decode_step(self) -> int:
        """Parameters a decode step reads: the embedding table is only indexed (one row per
        token), every other matrix is streamed in full."""
        return self.total - self.embedding


def count_parameters(config: ModelConfig) -> WeightCount:
    """Parameter count from the shapes (no model needed), matching ``MistralForCausalLM``:
    q/k/v/o projections, gate/up/down MLP, two RMSNorms per layer, untied LM head."""
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, \
        config.num_key_value_heads
    head_dim = config.head_dim
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * config.intermediate_size
    embedding = config.vocab_size * hidden
    return WeightCount(
        embedding=embedding,
        lm_head=0 if config.tie_word_embeddings else embedding,
        per_layer=attention + mlp + 2 * hidden,
        num_layers=config.num_hidden_layers,
        final_norm=hidden,
    )


def copy_bandwidth_gb_s(device: torch.device, num_bytes: int, iters: int = 20,
                        warmup: int = 3) -> float:
    """GB/s of ``dst.copy_(src)`` counting the bytes read plus the bytes written, the usual
    convention (STREAM copy, nvbandwidth); a tensor far larger than L2 so HBM is measured."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    seconds = timed_seconds(lambda: dst.copy_(src), device, iters, warmup)
    return 2 * num_bytes / seconds / 1e9


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, iters: int = 20,
                  warmup: int = 3) -> float:
    """Dense ``size x size x size`` matmul rate: 2 * size^3 FLOPs per call."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, dtype=dtype, device=device, generator=gen)
    b = torch.randn(size, size, dtype=dtype, device=device, generator=gen)
    out = torch.empty(size, size, dtype=dtype, device=device)
    seconds = timed_seconds(lambda: torch.matmul(a, b, out=out), device, iters, warmup)
    return 2 * size**3 / seconds / 1e12
