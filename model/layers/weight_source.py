"""A read-only view of one checkpoint tensor that can be sliced before it is read.

safetensors' ``get_slice`` returns an object that reads only the requested rows from disk;
a plain ``torch.Tensor`` behaves the same way in tests. Layers call ``source[rows]`` with
their own shard's range so that each rank reads only its slice.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class WeightSource(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: Any) -> torch.Tensor: ...


class SafetensorsSlice:
    """Adapts ``safe_open(...).get_slice(name)`` to :class:`WeightSource`."""

    def __init__(self, handle: Any, name: str) -> None:
        self._slice = handle.get_slice(name)
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._slice.get_shape())

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self._slice[index]

    def full(self) -> torch.Tensor:
        return self._slice[:]


class TensorSource:
    """Wraps an in-memory tensor (for derived tensors, e.g. permuted q/k weights)."""

    def __init__(self, tensor: torch.Tensor, name: str = "") -> None:
        self.tensor = tensor
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self.tensor[index]


class WeightShapeError(ValueError):
    """A checkpoint tensor does not have the shape the model expects."""


def check_shape(name: str, actual: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(actual) != tuple(expected):
        raise WeightShapeError(
            f"tensor {name!r} has shape {list(actual)}, expected {list(expected)}"
        )
