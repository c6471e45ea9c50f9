"""Where the model runs. The engine talks to every executor through one small interface.

``LocalExecutor`` runs one model runner in this process (tp=1); the Ray worker group of
``cluster/`` implements the same interface for tp > 1, so the scheduler has one code path.
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch

from model.cuda_graph import CudaGraphOptions
from model.factory import build_model
from model.kv_cache import KVCacheSpec, allocate_kv_cache
from model.runner import ModelRunner
from model.step import StepInput, StepOutput
from serve.engine.config import EngineConfig

logger = logging.getLogger(__name__)

DEFAULT_CPU_KV_BYTES = 1 << 30


class ExecutorError(RuntimeError):
    """The model workers failed; in-flight requests should be retried elsewhere."""


class Executor(Protocol):
    num_kv_blocks: int
    max_model_len: int

    def execute(self, step: StepInput) -> StepOutput: ...

    def shutdown(self) -> None: ...


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def available_memory(device: torch.device) -> int:
    """Free bytes on the device now (after weights are loaded)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return DEFAULT_CPU_KV_BYTES


def kv_budget_bytes(config: EngineConfig, device: torch.device) -> int:
    memory = config.kv_cache_memory
    if isinstance(memory, float):
        return int(available_memory(device) * memory)
    if isinstance(memory, int):
        return memory
    if device.type == "cuda":
        return int(available_memory(device) * 0.9)
    return min(DEFAULT_CPU_KV_BYTES, available_memory(device) // 4)


def cuda_graph_options(config: EngineConfig) -> CudaGraphOptions:
    return CudaGraphOptions(config.cuda_graphs, config.cuda_graph_batch_limit)


def num_kv_blocks(config: EngineConfig, spec: KVCacheSpec, device: torch.device) -> int:
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    return spec.num_blocks_for(kv_budget_bytes(config, device))


class LocalExecutor:
    """One model runner in this process."""

    def __init__(self, config: EngineConfig) -> None:
        device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        model = build_model(config.model, dtype=config.dtype, device=device,
                            attention_backend=config.attention_backend,
                            load_format=config.load_format, max_model_len=config.max_model_len,
                            block_size=config.block_size)
        spec = KVCacheSpec.for_model(model.config, model.ctx, config.block_size, model.dtype)
        self.num_kv_blocks = num_kv_blocks(config, spec, device)
        self.max_model_len = model.config.max_position_embeddings
        caches = allocate_kv_cache(spec, self.num_kv_blocks, device)
        logger.info("KV cache: %d blocks of %d tokens (%.1f MiB)", self.num_kv_blocks,
                    config.block_size, self.num_kv_blocks * spec.bytes_per_block / 2**20)
        self.runner = ModelRunner(model, caches, config.block_size, device,
                                  cuda_graph_options(config))
        self.model_config = model.config

    def execute(self, step: StepInput) -> StepOutput:
        output = self.runner.execute(step)
        assert output is not None  # the local runner is always the driver
        return output

    def shutdown(self) -> None:
        self.runner.kv_caches.clear()
        # The graphs hold their memory pool and pointers into the caches just cleared.
        self.runner.decode_graphs = None
