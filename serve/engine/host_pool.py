"""The engine's side of the KV host tier: which block keys it holds, in which host block.

Host blocks ``0 .. num_blocks - 1`` are the rows of every rank's host tensor
(``model/kv_host_tier.py``): this pool picks the ids, the runners copy. A key is here only
while it is not in the device cache (the block pool moves it in and out), and the keys
leave in least-recently-offloaded order when the tier is full::

    pool = HostBlockPool(3)
    pool.put([k1, k2])      # ([(k1, 0), (k2, 1)], []): offloaded into host blocks 0 and 1
    pool.take(k1)           # 0: restored to the device; this step's restore reads block 0
    pool.put([k3, k4])      # ([(k3, 2), (k4, 1)], [k2]): block 0 is still being read, so
                            #   k2, the oldest key, makes room
    pool.end_step()         # the step's copies were handed over: block 0 is free again

Free blocks are handed out lowest id first, so the blocks one step offloads tend to be
consecutive ids, which the runners move in one copy per run.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Sequence

from serve.engine.block_hash import BlockHash


class HostBlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self._blocks: OrderedDict[BlockHash, int] = OrderedDict()  # key -> block, oldest first
        self._free: list[int] = list(range(num_blocks))  # a heap
        # Blocks this step's restores read: free again once the step's copies are handed
        # over (later steps' copies run after them on every rank).
        self._released: list[int] = []

    def __contains__(self, block_hash: BlockHash) -> bool:
        return block_hash in self._blocks

    def __len__(self) -> int:
        """Blocks holding a key."""
        return len(self._blocks)

    @property
    def num_free_blocks(self) -> int:
        """Blocks an offload can take now without dropping a key."""
        return len(self._free)

    def get(self, block_hash: BlockHash) -> int | None:
        return self._blocks.get(block_hash)

    def keys(self) -> list[BlockHash]:
        """Every key held, oldest first."""
        return list(self._blocks)

    def put(self, block_hashes: Sequence[BlockHash]
            ) -> tuple[list[tuple[BlockHash, int]], list[BlockHash]]:
        """Take evicted device keys (least recently used first): ``(stored, dropped)``.

        ``stored`` pairs each key kept with its host block; ``dropped`` are older host keys
        that made room. When the step's restores hold so many blocks that not every key
        fits, the oldest of ``block_hashes`` are the ones left out of ``stored``.
        """
        room = len(self._free) + len(self._blocks)
        keep = block_hashes[max(0, len(block_hashes) - room):]
        stored: list[tuple[BlockHash, int]] = []
        dropped: list[BlockHash] = []
        for block_hash in keep:
            if block_hash in self._blocks:
                raise ValueError("a key offloaded to the host tier twice")
            if not self._free:
                old, block = self._blocks.popitem(last=False)
                dropped.append(old)
                heapq.heappush(self._free, block)
            block = heapq.heappop(self._free)
            self._blocks[block_hash] = block
            stored.append((block_hash, block))
        return stored, dropped

    def take(self, block_hash: BlockHash) -> int:
        """A restore: the key leaves the tier; its block is reused from the next step on."""
        block = self._blocks.pop(block_hash)
        self._released.append(block)
        return block

    def discard(self, block_hash: BlockHash) -> bool:
        """The device computed the key again: forget the host copy (nothing reads it, so
        its block is free at once). False when the key is not here."""
        block = self._blocks.pop(block_hash, None)
        if block is None:
            return False
        heapq.heappush(self._free, block)
        return True

    def end_step(self) -> None:
        for block in self._released:
            heapq.heappush(self._free, block)
        self._released.clear()

    def reset(self) -> None:
        """Forget every key."""
        self._blocks.clear()
        self._released.clear()
        self._free = list(range(self.num_blocks))

    def check(self) -> None:
        """Raise unless every block is in exactly one place (held, free or released); for
        tests, which call it after every step."""
        held = list(self._blocks.values())
        places = held + self._free + self._released
        if sorted(places) != list(range(self.num_blocks)):
            raise AssertionError(f"host blocks lost or held twice: held {sorted(held)}, "
                                 f"free {sorted(self._free)}, released {self._released}")
