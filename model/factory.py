"""Build a loaded model (this rank's shard) from a checkpoint path or a preset name, and the
model runner around it: :func:`build_runner` is the one way every executor (the in-process one
at tp=1 and each tensor-parallel rank) builds its runner."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from model.attention.backend import create_backend
from model.build_thread import build_on_exiting_thread
from model.config import PRESETS, ModelConfig
from model.cuda_graph import CudaGraphOptions
from model.envs import fault_step_delay_s
from model.kv_cache import KVCacheSpec, allocate_kv_cache, kv_budget_bytes
from model.kv_host_tier import HostKVTier
from model.layers.cpu_linear import pack_cpu_linears
from model.loader import load_dummy_weights, load_weights
from model.mistral import MistralForCausalLM
from model.parallel import SINGLE, ParallelContext
from model.runner import ModelRunner
from model.runner_config import RunnerConfig

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LOAD_FORMATS = ("auto", "safetensors", "dummy")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on GPUs and float32 on CPUs (CPU bf16 matmuls are slow and inexact)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def build_model(model: str | Path, *, dtype: str | torch.dtype = "auto",
                device: str | torch.device = "cpu", ctx: ParallelContext = SINGLE,
                attention_backend: str = "auto", load_format: str = "auto",
                max_model_len: int | None = None, progress: bool = False,
                block_size: int = 16,
                ) -> MistralForCausalLM:
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {', '.join(LOAD_FORMATS)}, "
                         f"got {load_format!r}")
    device = torch.device(device)
    config = ModelConfig.from_pretrained(model)
    if max_model_len is not None:
        if max_model_len > config.max_position_embeddings:
            raise ValueError(f"max_model_len {max_model_len} exceeds the model's context of "
                             f"{config.max_position_embeddings} tokens")
        config = config.replace(max_position_embeddings=max_model_len)
    torch_dtype = resolve_dtype(dtype, device)
    backend = create_backend(attention_backend, device, block_size)
    with torch.device(device):
        network = MistralForCausalLM(config, ctx, backend, torch_dtype)
    is_preset = str(model) in PRESETS
    if load_format == "dummy" or (is_preset and load_format == "auto"):
        load_dummy_weights(network)
    else:
        if is_preset:
            raise ValueError(f"{model!r} is a preset with no weights; pass a checkpoint "
                             "directory or load_format='dummy'")
        load_weights(network, model, progress=progress)
    packed = pack_cpu_linears(network)
    if packed:
        logger.info("CPU matmuls: %d weights packed for oneDNN", packed)
    return network.eval()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_runner(config: RunnerConfig, *, device: torch.device | None = None,
                 ctx: ParallelContext = SINGLE,
                 agree_num_blocks: Callable[[int], int] | None = None) -> ModelRunner:
    """Seed, load this rank's shard, size and allocate its KV cache (and host tier, with
    ``kv_host_memory``), wrap them in a runner.

    ``device`` overrides ``config.device`` (a Ray rank knows its GPU only once it runs).
    ``agree_num_blocks`` turns this rank's block count into the group's: ranks see different
    free memory, but block ids index every rank's cache alike, so all allocate what the
    tightest rank can hold (an all-reduce MIN at tp > 1); host block ids too.
    """
    device = device if device is not None else resolve_device(config.device)
    if device.type == "cpu":  # the thread that steps must be the only OpenMP master
        return build_on_exiting_thread(
            lambda: _build_runner(config, device, ctx, agree_num_blocks))
    return _build_runner(config, device, ctx, agree_num_blocks)


def _build_runner(config: RunnerConfig, device: torch.device, ctx: ParallelContext,
                  agree_num_blocks: Callable[[int], int] | None) -> ModelRunner:
    if device.type == "cpu":
        if config.cpu_threads is not None:
            torch.set_num_threads(config.cpu_threads)
        logger.info("CPU threads: %d", torch.get_num_threads())
    # Unseeded sampling happens on rank 0 only; seeding here makes it the same at every tp.
    torch.manual_seed(config.seed)
    model = build_model(config.model, dtype=config.dtype, device=device, ctx=ctx,
                        attention_backend=config.attention_backend,
                        load_format=config.load_format, max_model_len=config.max_model_len,
                        block_size=config.block_size)
    spec = KVCacheSpec.for_model(model.config, ctx, config.block_size, model.dtype)
    num_blocks = config.num_kv_blocks
    if num_blocks is None:
        num_blocks = spec.num_blocks_for(kv_budget_bytes(config.kv_cache_memory, device))
    if agree_num_blocks is not None:
        num_blocks = agree_num_blocks(num_blocks)
    caches = allocate_kv_cache(spec, num_blocks, device)
    logger.info("KV cache: %d blocks of %d tokens (%.1f MiB)", num_blocks, config.block_size,
                num_blocks * spec.bytes_per_block / 2**20)
    host_tier = None
    if config.kv_host_memory:
        num_host_blocks = spec.num_blocks_for(config.kv_host_memory)
        if agree_num_blocks is not None:
            num_host_blocks = agree_num_blocks(num_host_blocks)
        host_tier = HostKVTier(spec, num_host_blocks, device)
        logger.info("KV host tier: %d blocks (%.1f MiB)", num_host_blocks,
                    host_tier.num_bytes / 2**20)
    graphs = CudaGraphOptions(config.cuda_graphs, config.cuda_graph_max_batch_size)
    return ModelRunner(model, caches, config.block_size, device, graphs,
                       step_delay_s=fault_step_delay_s(), host_tier=host_tier,
                       tokenizer=config.tokenizer or config.model)
