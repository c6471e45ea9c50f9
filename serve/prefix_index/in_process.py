"""The embedded prefix index: plain dicts behind one lock, bounded by an LRU cap.

Replicas are bits: each block key maps to an int whose bit ``b`` is set when the replica
owning bit ``b`` holds the block. ``match_prefix`` then walks the prompt with one dict lookup
and one AND per block, whatever the number of replicas. Worked example with A = bit 0 and
B = bit 1, blocks ``k0 k1 k2`` held as ``0b11, 0b11, 0b10``::

    active = 0b11 (k0) -> 0b11 & 0b11 (k1) = 0b11 -> 0b11 & 0b10 (k2) = 0b10
    A drops out at k2: count 2;  B survives the walk: count 3  -> {"A": 2, "B": 3}

Tiers: a second mask per key has the bits of the replicas holding it on their host tier
(a subset of its mask; a key on no host tier has no entry), so ``match_prefix_tiers`` adds
one lookup per block of the walk.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from serve.engine.block_hash import BlockHash
from serve.engine.kv_events import HOST, AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from serve.prefix_index.base import TierMatch

DEFAULT_MAX_BLOCKS = 1 << 19  # ~8M tokens at block_size 16; about 100 MB of index at most
DEFAULT_SESSION_TTL_S = 600.0
_MIN_SWEEP_SIZE = 1024


def _bits(mask: int) -> Iterator[int]:
    """Indices of the set bits of ``mask``, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


@dataclass
class InProcessPublisher:
    """``KVEventSink`` of one replica on an ``InProcessPrefixIndex``."""

    index: InProcessPrefixIndex
    replica_id: str

    def publish(self, events: Sequence[KVEvent]) -> None:
        self.index._apply(self.replica_id, events)

    def resync(self, stored: Sequence[BlockStored]) -> None:
        self.index._apply(self.replica_id, [AllBlocksCleared(), *stored])


class InProcessPrefixIndex:
    """``PrefixIndex`` in this process's memory: the default when no Redis is configured.

    ``max_blocks`` caps the number of block keys; beyond it the least recently stored or
    matched key is forgotten (the index is advisory, so this only costs a possible miss).
    Sessions expire by ``time.monotonic`` (``clock`` is injectable for tests).
    """

    def __init__(
        self,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        session_ttl_s: float = DEFAULT_SESSION_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_blocks <= 0:
            raise ValueError(f"max_blocks must be positive, got {max_blocks}")
        self.max_blocks = max_blocks
        self.session_ttl_s = session_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._blocks: OrderedDict[BlockHash, int] = OrderedDict()  # key -> replica bitmask
        self._host: dict[BlockHash, int] = {}  # key -> bits of the replicas holding it on host
        self._bit_of: dict[str, int] = {}
        self._replica_of_bit: dict[int, str] = {}
        self._free_bits: list[int] = []
        # Reverse index, so AllBlocksCleared / remove_replica cost O(replica's blocks), not
        # a scan of every key under the lock.
        self._replica_blocks: dict[str, set[BlockHash]] = {}
        self._sessions: dict[str, tuple[str, float]] = {}  # id -> (replica, expires_at)
        self._next_sweep_size = _MIN_SWEEP_SIZE

    # ---- blocks --------------------------------------------------------------------------

    def publisher(self, replica_id: str) -> InProcessPublisher:
        return InProcessPublisher(self, replica_id)

    def _bit(self, replica_id: str) -> int:
        bit = self._bit_of.get(replica_id)
        if bit is None:
            # Reuse bits of removed replicas so masks stay as small as the live replica count.
            bit = self._free_bits.pop() if self._free_bits else len(self._bit_of)
            self._bit_of[replica_id] = bit
            self._replica_of_bit[bit] = replica_id
            self._replica_blocks[replica_id] = set()
        return bit

    def _apply(self, replica_id: str, events: Sequence[KVEvent]) -> None:
        with self._lock:
            bit = 1 << self._bit(replica_id)
            owned = self._replica_blocks[replica_id]
            blocks = self._blocks
            for event in events:
                if isinstance(event, BlockStored):
                    on_host = event.tier == HOST
                    for key in event.block_hashes:
                        blocks[key] = blocks.get(key, 0) | bit
                        blocks.move_to_end(key)
                        owned.add(key)
                        self._set_host(key, bit, on_host)
                    while len(blocks) > self.max_blocks:
                        self._evict_oldest()
                elif isinstance(event, BlockRemoved):
                    for key in event.block_hashes:
                        self._unset(key, bit)
                        owned.discard(key)
                elif isinstance(event, AllBlocksCleared):
                    self._clear_locked(replica_id)

    def _set_host(self, key: BlockHash, bit: int, on_host: bool) -> None:
        host = self._host.get(key, 0)
        new = host | bit if on_host else host & ~bit
        if new:
            self._host[key] = new
        elif host:
            del self._host[key]

    def _unset(self, key: BlockHash, bit: int) -> None:
        mask = self._blocks.get(key)
        if mask is None:
            return
        self._set_host(key, bit, False)
        mask &= ~bit
        if mask:
            self._blocks[key] = mask
        else:
            del self._blocks[key]

    def _evict_oldest(self) -> None:
        key, mask = self._blocks.popitem(last=False)
        self._host.pop(key, None)
        for bit in _bits(mask):
            self._replica_blocks[self._replica_of_bit[bit]].discard(key)

    def _clear_locked(self, replica_id: str) -> None:
        bit = 1 << self._bit_of[replica_id]
        owned = self._replica_blocks[replica_id]
        for key in owned:
            self._unset(key, bit)
        owned.clear()

    def match_prefix(self, block_hashes: Sequence[BlockHash]) -> dict[str, int]:
        """Leading-block counts per replica (see ``serve.prefix_index.base`` for the rule)."""
        if not block_hashes:
            return {}
        with self._lock:
            return self._leading_counts(block_hashes)

    def match_prefix_tiers(self, block_hashes: Sequence[BlockHash]) -> dict[str, TierMatch]:
        """Leading-block counts per replica, with how many of them are on its host tier."""
        if not block_hashes:
            return {}
        with self._lock:
            counts = self._leading_counts(block_hashes)
            num_host = dict.fromkeys(counts, 0)
            host, replica_of_bit = self._host, self._replica_of_bit
            for index in range(max(counts.values(), default=0)):
                for bit in _bits(host.get(block_hashes[index], 0)):
                    replica = replica_of_bit[bit]
                    if index < counts.get(replica, 0):
                        num_host[replica] += 1
        return {replica: TierMatch(count, num_host[replica]) for replica, count in counts.items()}

    def _leading_counts(self, block_hashes: Sequence[BlockHash]) -> dict[str, int]:
        """The leading-count walk; the caller holds the lock."""
        counts: dict[str, int] = {}
        blocks = self._blocks
        active = blocks.get(block_hashes[0], 0)
        if not active:
            return counts
        blocks.move_to_end(block_hashes[0])  # a matched key is in use: keep it in the LRU
        num_blocks = len(block_hashes)
        for index in range(1, num_blocks):
            key = block_hashes[index]
            still = blocks.get(key, 0) & active
            for bit in _bits(active & ~still):
                counts[self._replica_of_bit[bit]] = index
            active = still
            if not active:
                break
            blocks.move_to_end(key)
        for bit in _bits(active):
            counts[self._replica_of_bit[bit]] = num_blocks
        return counts

    # ---- sessions ------------------------------------------------------------------------

    def get_session(self, session_id: str) -> str | None:
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                return None
            replica_id, expires_at = entry
            if self._clock() >= expires_at:
                del self._sessions[session_id]
                return None
            return replica_id

    def set_session(self, session_id: str, replica_id: str, ttl_s: float | None = None) -> None:
        ttl = self.session_ttl_s if ttl_s is None else ttl_s
        with self._lock:
            now = self._clock()
            self._sessions[session_id] = (replica_id, now + ttl)
            # Expired sessions nobody asks for again are swept when the dict has doubled
            # since the last sweep: amortized O(1) per call, memory bounded by live sessions.
            if len(self._sessions) >= self._next_sweep_size:
                self._sessions = {
                    sid: entry for sid, entry in self._sessions.items() if entry[1] > now
                }
                self._next_sweep_size = max(_MIN_SWEEP_SIZE, 2 * len(self._sessions))

    # ---- lifecycle -----------------------------------------------------------------------

    def remove_replica(self, replica_id: str) -> None:
        with self._lock:
            if replica_id in self._bit_of:
                self._clear_locked(replica_id)
                bit = self._bit_of.pop(replica_id)
                del self._replica_of_bit[bit]
                del self._replica_blocks[replica_id]
                self._free_bits.append(bit)
            self._sessions = {
                sid: entry for sid, entry in self._sessions.items() if entry[0] != replica_id
            }

    def close(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._host.clear()
            self._sessions.clear()

    def __len__(self) -> int:
        """Number of block keys held (for tests and metrics)."""
        return len(self._blocks)
