"""Tensor-parallel context handed to every layer.

With ``tp_size == 1`` no collective is ever issued, so the single-process model needs no
``torch.distributed`` initialisation at all. ``cluster/dist.py`` builds the context for tp > 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelContext:
    """This process's place in its tensor-parallel group."""

    tp_rank: int = 0
    tp_size: int = 1
    group: Any = None  # torch.distributed.ProcessGroup when tp_size > 1

    def __post_init__(self) -> None:
        if self.tp_size < 1 or not 0 <= self.tp_rank < self.tp_size:
            raise ValueError(f"tp_rank {self.tp_rank} is outside a group of size {self.tp_size}")

    @property
    def is_driver(self) -> bool:
        """Rank 0 samples and returns tokens."""
        return self.tp_rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a partial result over the group (in place, returned for chaining)."""
        if self.tp_size > 1:
            dist.all_reduce(tensor, group=self.group)
        return tensor

    def all_gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate each rank's slice of the last dimension, in rank order."""
        if self.tp_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.tp_size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)


SINGLE = ParallelContext()


def split_evenly(total: int, parts: int, what: str) -> int:
    """Size of one rank's share; ``total`` must divide evenly so shards line up."""
    if total % parts != 0:
        raise ValueError(f"{what} ({total}) is not divisible by tensor_parallel_size ({parts}); "
                         f"choose a tensor_parallel_size that divides {total}")
    return total // parts
