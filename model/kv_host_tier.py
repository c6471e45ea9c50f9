"""The host tier of one rank's KV cache: blocks evicted from the device wait here.

Layout: one tensor ``[num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim]``,
block-major within a layer (the device cache is ``[2, num_blocks, ...]`` per layer), so a
run of consecutive host blocks is one contiguous chunk and moves in one copy. The engine
picks the host block ids (``model.step.BlockCopies``); every rank copies its own shard of
the same blocks, so an id means the same block on every rank.

On CUDA the tensor is pinned and the copies run on a side stream, layer by layer; the
forward waits for layer i's copies only when it reaches layer i, so the copies of later
layers overlap the compute of earlier ones. On CPU the copies are plain tensor copies done
before the forward: the same code, so CI runs it.

One layer of a step that offloads device blocks 4, 9 to host blocks 0, 1 and restores host
block 6 into device block 2::

    staged = cache[:, [4, 9]] as [2 blocks, 2, block_size, heads, head_dim]  (gather)
    host[layer, 0:2] <- staged             one copy: host blocks 0, 1 are one run
    staged <- host[layer, 6:7]             one copy
    cache[:, [2]] <- staged                (scatter)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from model.kv_cache import KVCacheSpec
from model.step import BlockCopies

# Blocks staged on the device at once, per layer and direction: bounds the scratch memory a
# large restore takes outside the KV budget (512 Mistral-7B blocks at tp=1: 32 MiB).
MAX_STAGED_BLOCKS = 512


def contiguous_runs(host_blocks: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(index in the batch, first host block, length)`` of each run of consecutive ids.

    ``contiguous_runs([7, 8, 9, 3, 4, 11]) == [(0, 7, 3), (3, 3, 2), (5, 11, 1)]``: three
    copies instead of six.
    """
    runs: list[tuple[int, int, int]] = []
    start = 0
    for index in range(1, len(host_blocks) + 1):
        if index == len(host_blocks) or host_blocks[index] != host_blocks[index - 1] + 1:
            runs.append((start, host_blocks[start], index - start))
            start = index
    return runs


@dataclass
class _Batch:
    """At most ``max_staged_blocks`` copies of one direction: their device block ids (on the
    device) and the runs of their host blocks."""

    device_ids: torch.Tensor
    runs: list[tuple[int, int, int]]


class LayerWaits(list):  # type: ignore[type-arg]
    """The layer caches of one forward, each handed out only after its copies landed.

    The model walks the caches once, layer by layer (``zip(self.layers, kv_caches)``);
    making the compute stream wait on layer i's event as the walk reaches it lets the side
    stream copy layer i+1 while layer i computes.
    """

    def __init__(self, caches: list[torch.Tensor], events: list[torch.cuda.Event],
                 stream: torch.cuda.Stream) -> None:
        super().__init__(caches)
        self.events = events
        self.stream = stream

    def __iter__(self) -> Iterator[torch.Tensor]:
        for cache, event in zip(list.__iter__(self), self.events, strict=True):
            self.stream.wait_event(event)
            yield cache

    def wait_all(self) -> None:
        """For a forward that does not walk the caches (a CUDA graph replay)."""
        self.stream.wait_event(self.events[-1])


class HostKVTier:
    """``num_blocks`` host blocks of this rank, and the copies to and from its device cache."""

    def __init__(self, spec: KVCacheSpec, num_blocks: int, device: torch.device,
                 max_staged_blocks: int = MAX_STAGED_BLOCKS) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV host tier budget holds {num_blocks} blocks of "
                             f"{spec.bytes_per_block} bytes; give it at least one block")
        self.num_blocks = num_blocks
        self.max_staged_blocks = max_staged_blocks
        self.bytes_per_block = spec.bytes_per_block
        self.device = device
        on_cuda = device.type == "cuda"
        shape = (spec.num_layers, num_blocks, 2, spec.block_size, spec.num_kv_heads,
                 spec.head_dim)
        # empty, not zeros: a page of host memory is touched only when a block lands on it.
        self.blocks = torch.empty(shape, dtype=spec.dtype, pin_memory=on_cuda)
        self.stream = torch.cuda.Stream(device) if on_cuda else None

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block

    def copy(self, copies: BlockCopies, kv_caches: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run the step's copies; returns the caches the step's forward must use."""
        if self.stream is None:
            self._copy_all(copies, kv_caches)
            return kv_caches
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            events = self._copy_all(copies, kv_caches, compute)
        return LayerWaits(kv_caches, events, compute)

    def _copy_all(self, copies: BlockCopies, kv_caches: list[torch.Tensor],
                  compute: torch.cuda.Stream | None = None) -> list[torch.cuda.Event]:
        offloads = self._batches([(device, host) for device, host in copies.offload])
        restores = self._batches([(device, host) for host, device in copies.restore])
        if compute is not None:
            # After the block ids are on their way: the steps before wrote the blocks an
            # offload reads, and may still read blocks a restore overwrites.
            self.stream.wait_stream(compute)  # type: ignore[union-attr]
        events: list[torch.cuda.Event] = []
        for layer, cache in enumerate(kv_caches):
            host = self.blocks[layer]
            # Offloads first: a restore may write a device block an offload of this step reads.
            for batch in offloads:
                staged = cache.index_select(1, batch.device_ids).transpose(0, 1).contiguous()
                for start, first, length in batch.runs:
                    host[first:first + length].copy_(staged[start:start + length],
                                                     non_blocking=True)
            for batch in restores:
                staged = torch.empty((len(batch.device_ids), *host.shape[1:]),
                                     dtype=host.dtype, device=cache.device)
                for start, first, length in batch.runs:
                    staged[start:start + length].copy_(host[first:first + length],
                                                       non_blocking=True)
                cache.index_copy_(1, batch.device_ids, staged.transpose(0, 1))
            if compute is not None:
                event = torch.cuda.Event()
                event.record(self.stream)
                events.append(event)
        return events

    def _batches(self, pairs: list[tuple[int, int]]) -> list[_Batch]:
        """``(device block, host block)`` pairs in batches of at most ``max_staged_blocks``."""
        batches = []
        for start in range(0, len(pairs), self.max_staged_blocks):
            chunk = pairs[start:start + self.max_staged_blocks]
            device_ids = torch.tensor([device for device, _ in chunk], dtype=torch.int64)
            batches.append(_Batch(device_ids.to(self.device, non_blocking=True),
                                  contiguous_runs([host for _, host in chunk])))
        return batches
