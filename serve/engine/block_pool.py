"""The pool of KV blocks: reference counts, the free queue in eviction order, the cache map.

Every block is in exactly one of two states:

- in use (``ref_cnt > 0``): owned by one or more requests, never evicted;
- free (``ref_cnt == 0``): in the free queue. A free block may still hold a cached key, and
  then it is still a cache hit (``touch`` takes it back out of the queue) until its memory is
  needed: ``get_new_blocks`` pops from the queue head and only then forgets the key.

Eviction order (head first): free blocks with no key (their content is unreachable, so
evicting them costs nothing), then cached free blocks from least to most recently freed.
A request frees its blocks tail first, so its tail is evicted before its prefix.

The pool records ``kv_events`` as keys enter (``cache_full_blocks``) and leave
(``get_new_blocks``, ``reset_prefix_cache``) the cache, one event per call, not per block;
``drain_events`` hands them over once per engine step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from serve.engine.block_hash import BlockHash
from serve.engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent


@dataclass(slots=True)
class KVCacheBlock:
    """One block of ``block_size`` token slots in the paged KV cache."""

    block_id: int
    ref_cnt: int = 0
    # The key this block is cached under, or None; set only while it is in the cache map.
    block_hash: BlockHash | None = None


class BlockPool:
    """Blocks ``0 .. num_blocks - 1``; a fresh pool hands them out in id order."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.blocks: list[KVCacheBlock] = [KVCacheBlock(block_id) for block_id in range(num_blocks)]
        # block_id -> block, head = evicted first. An OrderedDict gives O(1) pop at the head,
        # append at either end and removal from the middle (a cache hit on a free block).
        self._free_queue: OrderedDict[int, KVCacheBlock] = OrderedDict(
            (block.block_id, block) for block in self.blocks
        )
        self._cached: dict[BlockHash, KVCacheBlock] = {}
        self._events: list[KVEvent] = []

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_queue)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (0.0 when idle; cached free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def free_block_ids(self) -> list[int]:
        """Free block ids in eviction order (head first); for tests and debugging."""
        return list(self._free_queue)

    def cached_hashes(self) -> list[BlockHash]:
        """Every key currently cached, for republishing the index after it lost its state."""
        return list(self._cached)

    def get_cached_block(self, block_hash: BlockHash) -> KVCacheBlock | None:
        return self._cached.get(block_hash)

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        """Take ``num_blocks`` blocks from the queue head (ref_cnt 1), evicting their keys."""
        if num_blocks > self.num_free_blocks:
            raise ValueError(f"asked for {num_blocks} blocks, only {self.num_free_blocks} free")
        blocks: list[KVCacheBlock] = []
        evicted: list[BlockHash] = []
        for _ in range(num_blocks):
            _, block = self._free_queue.popitem(last=False)
            if block.block_hash is not None:
                del self._cached[block.block_hash]
                evicted.append(block.block_hash)
                block.block_hash = None
            block.ref_cnt = 1
            blocks.append(block)
        if evicted:
            self._events.append(BlockRemoved(evicted))
        return blocks

    def touch(self, blocks: Sequence[KVCacheBlock]) -> None:
        """Take a reference to cache hits; a hit on a free block takes it out of the queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free_queue[block.block_id]
            block.ref_cnt += 1

    def free_blocks(self, blocks: Sequence[KVCacheBlock]) -> None:
        """Drop a reference to each block; ``blocks`` is in eviction order (first goes first).

        Blocks reaching ref_cnt 0 join the queue: cached ones at the tail (most recently
        used, still hits), uncached ones at the head (nothing to lose by reusing them).
        """
        uncached: list[KVCacheBlock] = []
        for block in blocks:
            if block.ref_cnt <= 0:
                raise ValueError(f"block {block.block_id} freed more often than taken")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.block_hash is None:
                    uncached.append(block)
                else:
                    self._free_queue[block.block_id] = block
        # Prepending one at a time reverses the order, so walk the list backwards.
        for block in reversed(uncached):
            self._free_queue[block.block_id] = block
            self._free_queue.move_to_end(block.block_id, last=False)

    def cache_full_blocks(
        self,
        blocks: Sequence[KVCacheBlock],
        block_hashes: Sequence[BlockHash],
        parent_block_hash: BlockHash | None,
        block_size: int,
    ) -> None:
        """Register consecutive full blocks of one sequence under their keys.

        ``parent_block_hash`` is the key of the block before ``blocks[0]``. A key already in
        the cache (another request computed the same content) keeps its block: this one stays
        uncached, and the stored run is split there, so each event is one unbroken chain.
        """
        if len(blocks) != len(block_hashes):
            raise ValueError("blocks and block_hashes differ in length")
        run: list[BlockHash] = []
        run_parent = parent_block_hash
        for block, block_hash in zip(blocks, block_hashes, strict=True):
            if block_hash in self._cached or block.block_hash is not None:
                if run:
                    self._events.append(BlockStored(run, run_parent, len(run) * block_size))
                run = []
                run_parent = block_hash
            else:
                block.block_hash = block_hash
                self._cached[block_hash] = block
                run.append(block_hash)
        if run:
            self._events.append(BlockStored(run, run_parent, len(run) * block_size))

    def reset_prefix_cache(self) -> bool:
        """Forget every key; only when no block is in use (their keys may be shared).

        Returns False and changes nothing while any request holds blocks.
        """
        if self.num_free_blocks != self.num_blocks:
            return False
        for block in self._cached.values():
            block.block_hash = None
        self._cached.clear()
        self._events.append(AllBlocksCleared())
        return True

    def drain_events(self) -> list[KVEvent]:
        events, self._events = self._events, []
        return events
