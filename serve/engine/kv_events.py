"""Events an engine publishes about its prefix cache, consumed by the prefix index.

The block pool records them as blocks are cached and evicted; the engine drains them once
per step and hands the whole batch to a ``KVEventSink`` (one pipelined write, never one
round trip per block). Keys are ``serve.engine.block_hash`` keys, so the index and the
router speak the same language as the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from serve.engine.block_hash import BlockHash


@dataclass(frozen=True)
class BlockStored:
    """Consecutive blocks of one sequence entered the cache.

    ``block_hashes`` are in sequence order; ``parent_block_hash`` is the key of the block
    just before the first of them (None when the first is a sequence's first block), so an
    index can stitch chains together. ``num_tokens`` = ``len(block_hashes) * block_size``.
    """

    block_hashes: list[BlockHash]
    parent_block_hash: BlockHash | None
    num_tokens: int


@dataclass(frozen=True)
class BlockRemoved:
    """Blocks were evicted: their memory was reused, the keys no longer hit on this engine."""

    block_hashes: list[BlockHash]


@dataclass(frozen=True)
class AllBlocksCleared:
    """The whole prefix cache was dropped (e.g. after new weights were loaded)."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KVEventSink(Protocol):
    """Where an engine sends its events: the prefix index (Redis or in-process)."""

    def publish(self, events: Sequence[KVEvent]) -> None: ...
