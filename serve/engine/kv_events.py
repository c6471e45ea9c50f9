"""Events an engine publishes about its prefix cache, consumed by the prefix index.

The block pool records them as blocks are cached and evicted; the engine drains them once
per step and hands the whole batch to a ``KVEventSink`` (one pipelined write, never one
round trip per block). Keys are ``serve.engine.block_hash`` keys, so the index and the
router speak the same language as the engine.

Tiers: on one engine a key lives in exactly one of the device cache, the host tier, or
nowhere, so every event names the tier it concerns and an index keeps one tier per
(key, replica): the latest store wins. A cached block the device evicts with a host tier
is ``BlockStored(..., tier="host")`` (it moved), without one ``BlockRemoved``; a host block
restored to the device is ``BlockStored(..., tier="device")``; a block the host tier drops
is ``BlockRemoved(..., tier="host")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from serve.engine.block_hash import BlockHash

Tier = Literal["device", "host"]
DEVICE: Tier = "device"
HOST: Tier = "host"


@dataclass(frozen=True)
class BlockStored:
    """Blocks entered ``tier`` (from nowhere, or from the other tier).

    On the device, ``block_hashes`` are consecutive blocks of one sequence in order, and
    ``parent_block_hash`` is the key of the block just before the first of them (None when
    the first is a sequence's first block), so an index can stitch chains together. A move
    to the host carries the blocks one step evicted, from any sequences, with no parent.
    ``num_tokens`` = ``len(block_hashes) * block_size``.
    """

    block_hashes: list[BlockHash]
    parent_block_hash: BlockHash | None
    num_tokens: int
    tier: Tier = DEVICE


@dataclass(frozen=True)
class BlockRemoved:
    """Blocks left ``tier`` for nowhere: their memory was reused, the keys no longer hit on
    this engine."""

    block_hashes: list[BlockHash]
    tier: Tier = DEVICE


@dataclass(frozen=True)
class AllBlocksCleared:
    """The whole prefix cache, both tiers, was dropped (new weights, a failed step)."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KVEventSink(Protocol):
    """Where an engine sends its events: the prefix index (Redis or in-process)."""

    def publish(self, events: Sequence[KVEvent]) -> None: ...
