"""The configuration one model runner is built from (``model.factory.build_runner``).

Plain data, cheap to import (no torch): the engine's config makes one, and Ray ships it to
every tensor-parallel rank.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunnerConfig:
    """What one rank needs to build its runner: the checkpoint, how to run it, and the KV
    budget. ``kv_cache_memory``: an int is bytes, a float a fraction of the memory still free
    after the weights load; ``num_kv_blocks`` overrides it. ``kv_host_memory``: bytes of this
    rank's host tier (None or 0: no tier). ``cuda_graph_max_batch_size`` is the largest
    decode batch replayed from a CUDA graph."""

    model: str
    dtype: str = "auto"
    device: str = "auto"
    block_size: int = 16
    kv_cache_memory: int | float | None = None
    num_kv_blocks: int | None = None
    kv_host_memory: int | None = None
    max_model_len: int | None = None
    attention_backend: str = "auto"
    load_format: str = "auto"
    seed: int = 0
    cuda_graphs: bool = True
    cuda_graph_max_batch_size: int = 256
    # The tokenizer's path or preset name (None: the model's), loaded by the driver rank on
    # the first request with structured output to build its grammars.
    tokenizer: str | None = None
    # Threads this rank's torch computes with on a CPU device (None: torch's default).
    cpu_threads: int | None = None
