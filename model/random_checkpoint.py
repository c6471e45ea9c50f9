"""Tiny random Mistral checkpoints written with the real HF ``save_pretrained`` and safetensors
code, and random token-id prompts: the one copy that the tests and the benchmarks share.

Lives in the package (not in tests/) because benchmarks must not import test code. transformers
is imported inside the functions, so importing this module costs torch only, and
``import model`` never imports it at all.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # annotations only: transformers is imported where a checkpoint is written
    from transformers import MistralConfig, MistralForCausalLM


def tiny_mistral_config(**overrides: Any) -> MistralConfig:
    """2 layers, hidden 64, 4 query heads over 2 KV heads (so GQA and tp=2/4 splits are
    exercised), a 320-token vocabulary and a 512-token context unless ``overrides`` say
    otherwise. Every field a Mistral checkpoint carries is spelled out, so a transformers
    release that changes a default cannot change what the tests compare."""
    from transformers import MistralConfig

    values: dict[str, Any] = dict(
        vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        rope_theta=1e6, rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )
    values.update(overrides)
    return MistralConfig(**values)


def save_hf_checkpoint(directory: Path, config: MistralConfig, seed: int = 0
                       ) -> MistralForCausalLM:
    """Random MistralForCausalLM saved with ``save_pretrained`` (safetensors); returns it, in
    float32 and eval mode, as the reference for parity checks."""
    from transformers import MistralForCausalLM

    torch.manual_seed(seed)  # the same weights on every run: failures reproduce
    model = MistralForCausalLM(config).to(torch.float32).eval()
    # HF's std-0.02 init gives near-uniform logits, where the greedy token flips on rounding;
    # wider weights make logits differ in earnest, so token agreement is a meaningful check.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.08)
    model.save_pretrained(directory, safe_serialization=True)
    return model


def write_tiny_checkpoint(directory: Path, *, with_tokenizer: bool = True,
                          **overrides: Any) -> Path:
    """A 2-layer Mistral with the full 32,000-token vocabulary (``overrides`` go to
    :func:`tiny_mistral_config`, e.g. ``max_position_embeddings``).

    ``with_tokenizer`` copies the real v1 ``tokenizer.model`` (bundled with mistral_common)
    next to the weights, so text prompts and chat work end to end. Callers that bring their
    own tokenizer and send token ids (the GPU benchmark) pass False and so do not need
    mistral_common installed.
    """
    save_hf_checkpoint(directory, tiny_mistral_config(vocab_size=32000, **overrides))
    if with_tokenizer:
        from model.tokenizer import bundled_mistral_v1_path

        shutil.copy(bundled_mistral_v1_path(), directory / "tokenizer.model")
    return directory


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """``count`` prompts of ``length`` uniform token ids in [100, vocab): above the special
    tokens, so no prompt contains BOS/EOS. Distinct seeds give prompts that share no prefix
    block, so the prefix cache cannot shorten a "cold" measurement; the same seed gives the
    same prompts, so two systems measured in one run see the same requests."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab, (count, length), generator=gen).tolist()
