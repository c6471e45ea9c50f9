"""The Mistral/Llama decoder, written with tensor-parallel layers from the start.

With ``tp_size == 1`` every parallel layer is a plain one. Activations are packed: the
tokens of every sequence in a step lie along one axis ([num_tokens, hidden]); the attention
backend finds each sequence's context through :class:`AttentionMetadata`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.attention.backend import AttentionBackend
from model.attention.metadata import AttentionMetadata
from model.config import ModelConfig
from model.layers.linear import ColumnParallelLinear, RowParallelLinear, qkv_shards
from model.layers.norm import RMSNorm
from model.layers.rotary import RotaryEmbedding
from model.layers.vocab import ParallelLMHead, VocabParallelEmbedding
from model.layers.weight_source import WeightSource, check_shape
from model.parallel import ParallelContext

WeightLoader = Callable[[WeightSource, str], None]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, ctx: ParallelContext, rotary: RotaryEmbedding,
                 backend: AttentionBackend, dtype: torch.dtype) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        shards = qkv_shards(config.head_dim, config.num_attention_heads,
                            config.num_key_value_heads, ctx)
        self.num_heads = shards[0].size // config.head_dim
        self.num_kv_heads = shards[1].size // config.head_dim
        self.q_size, self.kv_size = shards[0].size, shards[1].size
        self.qkv_proj = ColumnParallelLinear(config.hidden_size, shards, ctx, dtype)
        self.o_proj = RowParallelLinear(config.num_attention_heads * config.head_dim,
                                        config.hidden_size, ctx, dtype)
        self.rotary = rotary
        self.backend = backend
        self.scale = config.head_dim ** -0.5

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], -1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(positions, q, k)
        attended = self.backend.forward(q, k, v, kv_cache, meta, self.scale)
        return self.o_proj(attended.reshape(-1, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``, gate and up fused in one matmul."""

    def __init__(self, config: ModelConfig, ctx: ParallelContext, dtype: torch.dtype) -> None:
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = ColumnParallelLinear.split(
            config.hidden_size, {"gate": size, "up": size}, ctx, dtype)
        self.down_proj = RowParallelLinear(size, config.hidden_size, ctx, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, ctx: ParallelContext, rotary: RotaryEmbedding,
                 backend: AttentionBackend, dtype: torch.dtype) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = Attention(config, ctx, rotary, backend, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = MLP(config, ctx, dtype)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        hidden = hidden + self.self_attn(positions, self.input_layernorm(hidden), kv_cache, meta)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class MistralForCausalLM(nn.Module):
    """Decoder stack plus LM head. ``forward`` returns hidden states; ``compute_logits``
    projects only the rows that are sampled, which is most of the LM head's saving."""

    def __init__(self, config: ModelConfig, ctx: ParallelContext, backend: AttentionBackend,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = config
        self.ctx = ctx
        self.dtype = dtype
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, ctx,
                                                   dtype)
        rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings,
                                 config.rope_theta)
        self.layers = nn.ModuleList(
            DecoderLayer(config, ctx, rotary, backend, dtype)
            for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.lm_head = ParallelLMHead(self.embed_tokens, tied=config.tie_word_embeddings)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], meta: AttentionMetadata) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden = layer(positions, hidden, kv_cache, meta)
        return self.norm(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def weight_loaders(self) -> dict[str, WeightLoader]:
        """HF checkpoint tensor name → the function that loads this rank's part of it."""
        loaders: dict[str, WeightLoader] = {
            "model.embed_tokens.weight": self.embed_tokens.load,
            "model.norm.weight": _load_full(self.norm.weight),
        }
        if not self.config.tie_word_embeddings:
            loaders["lm_head.weight"] = self.lm_head.load
        for i, layer in enumerate(self.layers):
            prefix = f"model.layers.{i}."
            attn, mlp = layer.self_attn, layer.mlp
            for name in ("q", "k", "v"):
                loaders[f"{prefix}self_attn.{name}_proj.weight"] = _fused(attn.qkv_proj, name)
            loaders[f"{prefix}self_attn.o_proj.weight"] = attn.o_proj.load
            loaders[f"{prefix}mlp.gate_proj.weight"] = _fused(mlp.gate_up_proj, "gate")
            loaders[f"{prefix}mlp.up_proj.weight"] = _fused(mlp.gate_up_proj, "up")
            loaders[f"{prefix}mlp.down_proj.weight"] = mlp.down_proj.load
            loaders[f"{prefix}input_layernorm.weight"] = _load_full(layer.input_layernorm.weight)
            loaders[f"{prefix}post_attention_layernorm.weight"] = _load_full(
                layer.post_attention_layernorm.weight)
        return loaders


def _fused(linear: ColumnParallelLinear, shard: str) -> WeightLoader:
    return lambda source, name: linear.load(shard, source, name)


def _load_full(param: nn.Parameter) -> WeightLoader:
    """Replicated parameters (norm scales) are read whole on every rank."""

    def load(source: WeightSource, name: str) -> None:
        check_shape(name, source.shape, tuple(param.shape))
        param.data.copy_(source[:])

    return load
