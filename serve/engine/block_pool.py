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

With a host tier (``num_host_blocks > 0``) a cached block that ``get_new_blocks`` evicts
is not forgotten: its key moves to the ``HostBlockPool`` and the pool records the copy
(device block -> host block); ``restore`` brings host keys back into fresh device blocks
and records those copies. ``drain_copies`` hands a step's copies to the step that must run
them before its forward. A key is in exactly one of: the device cache map, the host pool,
nowhere. Example, block_size 16, free queue ``[1, 0]`` with block 0 cached under ``k``::

    pool.get_new_blocks(2)     # blocks 1, 0: k moves to host block 0, copy (0, 0),
                               #   event BlockStored([k], None, 16, tier="host")
    pool.free_blocks(blocks)   # both free again, uncached: free queue [1, 0]
    pool.restore([k], None)    # block 1 (the queue head) holds k again, copy (0, 1),
                               #   event BlockStored([k], None, 16)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from model.step import BlockCopies
from serve.engine.block_hash import BlockHash
from serve.engine.host_pool import HostBlockPool
from serve.engine.kv_events import (
    HOST,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEvent,
)
from serve.engine.stats import TierCounters


@dataclass(slots=True)
class KVCacheBlock:
    """One block of ``block_size`` token slots in the paged KV cache."""

    block_id: int
    ref_cnt: int = 0
    # The key this block is cached under, or None; set only while it is in the cache map.
    block_hash: BlockHash | None = None


class BlockPool:
    """Blocks ``0 .. num_blocks - 1``; a fresh pool hands them out in id order.
    ``block_size`` only sizes the events of blocks moved to the host tier."""

    def __init__(self, num_blocks: int, num_host_blocks: int = 0, block_size: int = 16) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.host = HostBlockPool(num_host_blocks) if num_host_blocks > 0 else None
        self.counters = TierCounters()
        self._offloads: list[tuple[int, int]] = []  # (device block, host block), this step
        self._restores: list[tuple[int, int]] = []  # (host block, device block), this step
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
        """Every key in the device cache (``resync_events`` has the host tier's too)."""
        return list(self._cached)

    def get_cached_block(self, block_hash: BlockHash) -> KVCacheBlock | None:
        return self._cached.get(block_hash)

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        """Take ``num_blocks`` blocks from the queue head (ref_cnt 1), evicting their keys
        (to the host tier, when there is one)."""
        if num_blocks > self.num_free_blocks:
            raise ValueError(f"asked for {num_blocks} blocks, only {self.num_free_blocks} free")
        blocks: list[KVCacheBlock] = []
        evicted: list[KVCacheBlock] = []
        for _ in range(num_blocks):
            _, block = self._free_queue.popitem(last=False)
            if block.block_hash is not None:
                del self._cached[block.block_hash]
                evicted.append(block)
            block.ref_cnt = 1
            blocks.append(block)
        if evicted:
            self._evict(evicted)
        return blocks

    def _evict(self, evicted: list[KVCacheBlock]) -> None:
        hashes: list[BlockHash] = [block.block_hash for block in evicted]  # type: ignore[misc]
        for block in evicted:
            block.block_hash = None
        if self.host is None:
            self._events.append(BlockRemoved(hashes))
            return
        stored, dropped = self.host.put(hashes)
        if dropped:
            self.counters.num_host_dropped += len(dropped)
            self._events.append(BlockRemoved(dropped, HOST))
        num_lost = len(hashes) - len(stored)  # the tier could not take them all this step
        if num_lost:
            self._events.append(BlockRemoved(hashes[:num_lost]))
        if stored:
            self._offloads.extend(
                (block.block_id, host_block)
                for block, (_, host_block) in zip(evicted[num_lost:], stored, strict=True))
            self.counters.num_offloaded += len(stored)
            self._events.append(BlockStored([block_hash for block_hash, _ in stored], None,
                                            len(stored) * self.block_size, HOST))

    def in_host_tier(self, block_hash: BlockHash) -> bool:
        return self.host is not None and block_hash in self.host

    def restore(self, block_hashes: Sequence[BlockHash],
                parent_block_hash: BlockHash | None) -> list[KVCacheBlock]:
        """Bring consecutive host keys of one sequence back: fresh device blocks (ref_cnt 1)
        cached under them, and their copies recorded. The caller checked there is room."""
        assert self.host is not None
        # Out of the host tier first: the evictions that make room on the device may need
        # room on the host, and must not drop these keys for it.
        host_blocks = [self.host.take(block_hash) for block_hash in block_hashes]
        blocks = self.get_new_blocks(len(block_hashes))
        for block, block_hash, host_block in zip(blocks, block_hashes, host_blocks,
                                                 strict=True):
            block.block_hash = block_hash
            self._cached[block_hash] = block
            self._restores.append((host_block, block.block_id))
        self.counters.num_restored += len(blocks)
        self._events.append(BlockStored(list(block_hashes), parent_block_hash,
                                        len(block_hashes) * self.block_size))
        return blocks

    def drain_copies(self) -> BlockCopies | None:
        """The copies recorded since the last drain, for the step about to be built (they
        must run before its forward); None when there are none."""
        if self.host is not None:
            self.host.end_step()
        if not self._offloads and not self._restores:
            return None
        copies = BlockCopies(self._offloads, self._restores)
        self._offloads, self._restores = [], []
        return copies

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
        uncached, and the stored run is split there, so each event is one unbroken chain. A
        key in the host tier moves here (the device now holds it), with no copy.
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
                if self.host is not None:
                    self.host.discard(block_hash)
                run.append(block_hash)
        if run:
            self._events.append(BlockStored(run, run_parent, len(run) * block_size))

    def reset_prefix_cache(self) -> bool:
        """Forget every key, in both tiers; only when no block is in use (their keys may be
        shared). Copies not yet handed to a step are dropped with them.

        Returns False and changes nothing while any request holds blocks.
        """
        if self.num_free_blocks != self.num_blocks:
            return False
        for block in self._cached.values():
            block.block_hash = None
        self._cached.clear()
        if self.host is not None:
            self.host.reset()
        self._offloads, self._restores = [], []
        self._events.append(AllBlocksCleared())
        return True

    def resync_events(self) -> list[BlockStored]:
        """Every key this pool holds, one event per tier, for republishing the index after
        it lost its state (``IndexPublisher.resync``)."""
        events = []
        if self._cached:
            events.append(BlockStored(list(self._cached), None,
                                      len(self._cached) * self.block_size))
        host_keys = self.host.keys() if self.host is not None else []
        if host_keys:
            events.append(BlockStored(host_keys, None, len(host_keys) * self.block_size, HOST))
        return events

    def drain_events(self) -> list[KVEvent]:
        events, self._events = self._events, []
        return events
