"""Build a loaded model (this rank's shard) from a checkpoint path or a preset name."""

from __future__ import annotations

from pathlib import Path

import torch

from model.attention.backend import create_backend
from model.config import PRESETS, ModelConfig
from model.loader import load_dummy_weights, load_weights
from model.mistral import MistralForCausalLM
from model.parallel import SINGLE, ParallelContext

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
    return network.eval()
