"""Tiny random checkpoints written with the real HF and safetensors code."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch


def tiny_mistral_config(**overrides: Any) -> Any:
    from transformers import MistralConfig

    values: dict[str, Any] = dict(
        vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        rope_theta=1e6, rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )
    values.update(overrides)
    return MistralConfig(**values)


def save_hf_checkpoint(directory: Path, config: Any, seed: int = 0) -> Any:
    """Random MistralForCausalLM saved with ``save_pretrained`` (safetensors); returns it."""
    from transformers import MistralForCausalLM

    torch.manual_seed(seed)
    model = MistralForCausalLM(config).to(torch.float32).eval()
    # HF's init leaves outputs near-uniform; widen the weights so logits differ in earnest.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.08)
    model.save_pretrained(directory, safe_serialization=True)
    return model


def write_tiny_checkpoint(directory: Path, **overrides: Any) -> Path:
    """A 2-layer Mistral with the full 32,000-token vocabulary and the real v1 tokenizer
    file, so text prompts and chat work end to end."""
    from model.tokenizer import bundled_mistral_v1_path

    save_hf_checkpoint(directory, tiny_mistral_config(vocab_size=32000, **overrides))
    shutil.copy(bundled_mistral_v1_path(), directory / "tokenizer.model")
    return directory
