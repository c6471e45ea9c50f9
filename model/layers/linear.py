"""Column- and row-parallel linear layers (Megatron-style) that own their weight shards.

Column-parallel: the output features are split, each rank computes its slice of ``y`` and no
communication is needed. Row-parallel: the input features are split, each rank computes a
partial ``y`` and one all-reduce sums them. Pairing column → row (QKV → o_proj, gate/up →
down) costs exactly one all-reduce per pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.layers.cpu_linear import PackableLinear
from model.layers.weight_source import WeightSource, check_shape
from model.parallel import ParallelContext, split_evenly


@dataclass(frozen=True)
class OutputShard:
    """Where this rank's rows of one fused sub-matrix come from.

    Example: gate/up of Mistral-7B at tp=2, rank 1: gate is
    ``OutputShard("gate", global_rows=14336, start=7168, size=7168)`` and it lands in rows
    0..7167 of the fused local weight; up is the same slice of the up matrix and lands in
    rows 7168..14335.
    """

    name: str
    global_rows: int
    start: int
    size: int


class ColumnParallelLinear(PackableLinear):
    """``y = x @ W.T`` with W's rows split across ranks; fused sub-matrices split one by one."""

    def __init__(self, input_size: int, shards: list[OutputShard], ctx: ParallelContext,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.input_size = input_size
        self.shards = {shard.name: shard for shard in shards}
        self.offsets: dict[str, int] = {}
        offset = 0
        for shard in shards:
            self.offsets[shard.name] = offset
            offset += shard.size
        self.output_size = offset
        self.ctx = ctx
        self.weight = nn.Parameter(torch.empty(offset, input_size, dtype=dtype),
                                   requires_grad=False)

    @classmethod
    def split(cls, input_size: int, outputs: dict[str, int], ctx: ParallelContext,
              dtype: torch.dtype = torch.float32) -> ColumnParallelLinear:
        """Each named output (e.g. gate and up) is split evenly over the ranks."""
        shards = []
        for name, rows in outputs.items():
            size = split_evenly(rows, ctx.tp_size, f"{name} output size")
            shards.append(OutputShard(name, rows, ctx.tp_rank * size, size))
        return cls(input_size, shards, ctx, dtype)

    def load(self, name: str, source: WeightSource, tensor_name: str) -> None:
        """Copy this rank's rows of checkpoint tensor ``tensor_name`` into sub-matrix ``name``."""
        shard = self.shards[name]
        check_shape(tensor_name, source.shape, (shard.global_rows, self.input_size))
        rows = source[shard.start:shard.start + shard.size]
        offset = self.offsets[name]
        self.weight.data[offset:offset + shard.size].copy_(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x)


def qkv_shards(head_dim: int, total_num_heads: int, total_num_kv_heads: int,
               ctx: ParallelContext) -> list[OutputShard]:
    """Query heads split evenly; KV heads split, or replicated when tp > KV heads.

    Example: 8 KV heads at tp=16 — ranks 0 and 1 both hold KV head 0, ranks 2 and 3 head 1.
    """
    num_heads = split_evenly(total_num_heads, ctx.tp_size, "number of attention heads")
    if ctx.tp_size <= total_num_kv_heads:
        num_kv_heads = split_evenly(total_num_kv_heads, ctx.tp_size, "number of KV heads")
        kv_head_start = ctx.tp_rank * num_kv_heads
    else:
        replicas = split_evenly(ctx.tp_size, total_num_kv_heads,
                                "tensor_parallel_size over the number of KV heads")
        num_kv_heads = 1
        kv_head_start = ctx.tp_rank // replicas
    q_rows, kv_rows = total_num_heads * head_dim, total_num_kv_heads * head_dim
    return [
        OutputShard("q", q_rows, ctx.tp_rank * num_heads * head_dim, num_heads * head_dim),
        OutputShard("k", kv_rows, kv_head_start * head_dim, num_kv_heads * head_dim),
        OutputShard("v", kv_rows, kv_head_start * head_dim, num_kv_heads * head_dim),
    ]


class RowParallelLinear(PackableLinear):
    """``y = x @ W.T`` with W's columns split across ranks and one all-reduce of the result."""

    def __init__(self, input_size: int, output_size: int, ctx: ParallelContext,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.global_input_size = input_size
        self.input_size = split_evenly(input_size, ctx.tp_size, "row-parallel input size")
        self.output_size = output_size
        self.ctx = ctx
        self.weight = nn.Parameter(torch.empty(output_size, self.input_size, dtype=dtype),
                                   requires_grad=False)

    def load(self, source: WeightSource, tensor_name: str) -> None:
        check_shape(tensor_name, source.shape, (self.output_size, self.global_input_size))
        start = self.ctx.tp_rank * self.input_size
        self.weight.data.copy_(source[:, start:start + self.input_size])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ctx.all_reduce(self.matmul(x))
