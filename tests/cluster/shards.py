"""What each rank should hold, computed from the full tensors of the safetensors file.

Written from the Megatron split rules, independently of ``model/layers``, so that it is an
oracle for them rather than a copy. Example (4 query heads, 2 KV heads, head_dim 16):

* tp=2, rank 1: q rows 32..63 (heads 2, 3), k and v rows 16..31 (KV head 1);
* tp=4, rank 2: q rows 32..47 (head 2), k and v rows 16..31 (KV head 1, which ranks 2 and
  3 both hold: 4 ranks over 2 KV heads replicate each twice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


def expected_shard(directory: Path, config: Any, rank: int, tp: int) -> dict[str, torch.Tensor]:
    full = load_file(str(directory / "model.safetensors"))
    head_dim = config.head_dim
    heads, kv_heads = config.num_attention_heads // tp, max(config.num_key_value_heads // tp, 1)
    kv_head = rank * kv_heads if tp <= config.num_key_value_heads \
        else rank // (tp // config.num_key_value_heads)

    def rows(tensor: torch.Tensor, start: int, size: int) -> torch.Tensor:
        return tensor[start:start + size]

    def vocab_rows(tensor: torch.Tensor) -> torch.Tensor:
        per_rank = -(-config.vocab_size // tp)
        out = torch.zeros(per_rank, tensor.shape[1], dtype=tensor.dtype)
        part = tensor[rank * per_rank:(rank + 1) * per_rank]
        out[:len(part)] = part
        return out

    ffn = config.intermediate_size // tp
    shard = {
        "embed_tokens.weight": vocab_rows(full["model.embed_tokens.weight"]),
        "norm.weight": full["model.norm.weight"],
        "lm_head.weight": vocab_rows(full["lm_head.weight"]),
    }
    for i in range(config.num_hidden_layers):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        q = rows(full[hf + "self_attn.q_proj.weight"], rank * heads * head_dim, heads * head_dim)
        k, v = (rows(full[hf + f"self_attn.{n}_proj.weight"], kv_head * head_dim,
                     kv_heads * head_dim) for n in ("k", "v"))
        shard[ours + "self_attn.qkv_proj.weight"] = torch.cat([q, k, v])
        columns = heads * head_dim
        shard[ours + "self_attn.o_proj.weight"] = \
            full[hf + "self_attn.o_proj.weight"][:, rank * columns:(rank + 1) * columns]
        shard[ours + "mlp.gate_up_proj.weight"] = torch.cat(
            [rows(full[hf + f"mlp.{n}_proj.weight"], rank * ffn, ffn) for n in ("gate", "up")])
        shard[ours + "mlp.down_proj.weight"] = \
            full[hf + "mlp.down_proj.weight"][:, rank * ffn:(rank + 1) * ffn]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            shard[ours + norm + ".weight"] = full[hf + norm + ".weight"]
    return shard
