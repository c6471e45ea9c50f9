"""The prefix index contract: which replica holds which KV blocks, which replica serves a session.

Engines publish their prefix-cache events through ``PrefixIndex.publisher(replica_id)``; the
router asks ``match_prefix`` for the longest cached prefix of a prompt on every replica and
``get_session`` for session affinity. The index is advisory: a stale or missing entry only
costs a cache miss, never a wrong answer, so implementations prefer a fast fallback (``{}``,
``None``) over an error.

The leading-count rule (``match_prefix``), worked example. A prompt has four blocks with
chained keys ``k0 k1 k2 k3`` and the index knows::

    k0: {A, B}    k1: {A, B}    k2: {B}    k3: {A, B}

A holds k0 and k1 but not k2, so its count stops at 2 even though it also holds k3 (a hit
needs every block before it: the KV of block 3 was computed over tokens A lacks). B holds all
four. A replica holding none of k0 is left out of the result::

    match_prefix([k0, k1, k2, k3]) == {"A": 2, "B": 4}

Tiers: a replica holds each of its blocks in one tier, device or host (the latest
``BlockStored`` says which). ``match_prefix_tiers`` counts the same leading blocks and, of
those, how many are on the host, so the router can price a copy against a prefill. With
B holding k1 and k2 on its host tier::

    match_prefix_tiers([k0, k1, k2, k3]) == {"A": TierMatch(2, 0), "B": TierMatch(4, 2)}
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from serve.engine.block_hash import BlockHash
from serve.engine.kv_events import HOST, BlockStored, KVEventSink, Tier


@dataclass(frozen=True)
class TierMatch:
    """One replica's leading blocks of a prompt, and how many of them are on its host tier."""

    num_blocks: int
    num_host_blocks: int = 0

    @property
    def num_device_blocks(self) -> int:
        return self.num_blocks - self.num_host_blocks


class IndexPublisher(KVEventSink, Protocol):
    """The sink one replica's engine publishes to (``KVEventSink``), plus a full resync."""

    @property
    def replica_id(self) -> str:
        """The replica whose engine publishes here."""
        ...

    def resync(self, stored: Sequence[BlockStored]) -> None:
        """Replace everything the index holds for this replica with ``stored``.

        A replica calls it with every block in its prefix cache after it (or the index)
        restarted, or periodically to refresh expiry of long-lived blocks; it costs one round
        trip per few thousand blocks, so it is not for the per-step hot path.
        """
        ...


class PrefixIndex(Protocol):
    """Block key -> replicas holding it, and session id -> replica, with expiry."""

    def publisher(self, replica_id: str) -> IndexPublisher:
        """A sink for the engine on ``replica_id``: ``publish(events)`` applies one batch."""
        ...

    def match_prefix(self, block_hashes: Sequence[BlockHash]) -> dict[str, int]:
        """Per replica, how many LEADING blocks of the prompt it holds (see the module doc).

        Replicas with a count of 0 are left out; ``{}`` means no hit anywhere, or the index is
        unavailable (routing then falls back to load). One round trip for the whole prompt.
        """
        ...

    def match_prefix_tiers(self, block_hashes: Sequence[BlockHash]) -> dict[str, TierMatch]:
        """``match_prefix`` with, per replica, how many of its leading blocks are on host."""
        ...

    def get_session(self, session_id: str) -> str | None:
        """The replica that served ``session_id`` last, or None (unknown, expired, removed)."""
        ...

    def set_session(self, session_id: str, replica_id: str, ttl_s: float | None = None) -> None:
        """Pin ``session_id`` to ``replica_id`` for ``ttl_s`` seconds (the index default if None)."""
        ...

    def remove_replica(self, replica_id: str) -> None:
        """Forget a dead or scaled-down replica: all its blocks, and the sessions pinned to it."""
        ...

    def close(self) -> None:
        """Release connections; the index must not be used afterwards."""
        ...


def leading_block_counts(holders: Sequence[Collection[str]]) -> dict[str, int]:
    """The leading-count rule over ``holders[i]`` = the replicas holding block ``i``.

    The reference the implementations are tested against (they compute the same thing with
    bitmasks or server-side). With the module example,
    ``leading_block_counts([{"A", "B"}, {"A", "B"}, {"B"}, {"A", "B"}]) == {"A": 2, "B": 4}``.
    """
    counts: dict[str, int] = {}
    active = set(holders[0]) if holders else set()
    for index, holding in enumerate(holders[1:], start=1):
        for replica in active.difference(holding):
            counts[replica] = index
        active.intersection_update(holding)
        if not active:
            break
    for replica in active:
        counts[replica] = len(holders)
    return counts


def leading_tier_counts(holders: Sequence[Mapping[str, Tier]]) -> dict[str, TierMatch]:
    """``leading_block_counts`` over ``holders[i]`` = replica -> the tier holding block ``i``,
    with the host blocks of each leading run counted; the reference for
    ``match_prefix_tiers``."""
    counts = leading_block_counts([set(holding) for holding in holders])
    return {replica: TierMatch(count, sum(1 for holding in holders[:count]
                                          if holding[replica] == HOST))
            for replica, count in counts.items()}
