"""Vocabulary-parallel embedding and LM head.

Each rank holds ``ceil(vocab / tp)`` rows; the last rank's tail beyond the vocabulary is zero
padding so every shard has one shape. Example: vocab 49152 at tp=4 → 12288 rows per rank,
rank 2 owns ids 24576..36863.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.layers.cpu_linear import PackableLinear
from model.layers.weight_source import WeightSource, check_shape
from model.parallel import ParallelContext


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, ctx: ParallelContext,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.ctx = ctx
        self.rows_per_rank = -(-vocab_size // ctx.tp_size)
        self.vocab_start = ctx.tp_rank * self.rows_per_rank
        self.vocab_end = min(self.vocab_start + self.rows_per_rank, vocab_size)
        self.weight = nn.Parameter(torch.zeros(self.rows_per_rank, hidden_size, dtype=dtype),
                                   requires_grad=False)

    def load(self, source: WeightSource, tensor_name: str) -> None:
        check_shape(tensor_name, source.shape, (self.vocab_size, self.hidden_size))
        rows = self.vocab_end - self.vocab_start
        self.weight.data[:rows].copy_(source[self.vocab_start:self.vocab_end])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.ctx.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        # Ids owned by another rank look up row 0 and are zeroed; the all-reduce then fills
        # every position from the one rank that owns it.
        outside = (input_ids < self.vocab_start) | (input_ids >= self.vocab_end)
        local_ids = (input_ids - self.vocab_start).masked_fill(outside, 0)
        embedded = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return self.ctx.all_reduce(embedded)


class ParallelLMHead(PackableLinear):
    """Logits over this rank's vocabulary slice, gathered to the full vocabulary."""

    def __init__(self, embedding: VocabParallelEmbedding, tied: bool) -> None:
        super().__init__()
        self.vocab_size = embedding.vocab_size
        self.ctx = embedding.ctx
        self.embedding = embedding
        if tied:
            self.weight = embedding.weight
        else:
            self.weight = nn.Parameter(torch.zeros_like(embedding.weight), requires_grad=False)

    def load(self, source: WeightSource, tensor_name: str) -> None:
        check_shape(tensor_name, source.shape, (self.vocab_size, self.embedding.hidden_size))
        start, end = self.embedding.vocab_start, self.embedding.vocab_end
        self.weight.data[:end - start].copy_(source[start:end])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.matmul(hidden)
        return self.ctx.all_gather_last_dim(logits)[..., :self.vocab_size]
