"""Counters of the KV tiers and the prefix cache's hits by tier, for stats and metrics.

The block pool and manager bump the counters as blocks move; ``tier_stats`` reads them
once per stats poll, never per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve.engine.block_manager import BlockManager


@dataclass
class TierCounters:
    """Blocks moved between the tiers since the pool started."""

    num_offloaded: int = 0  # device -> host
    num_restored: int = 0  # host -> device
    num_host_dropped: int = 0  # left the host tier for nowhere


@dataclass
class PrefixHitCounters:
    """Tokens looked up in the prefix cache when requests were admitted (preempted ones
    again when readmitted), and the hits in each tier, since the manager started."""

    num_query_tokens: int = 0
    num_device_hit_tokens: int = 0
    num_host_hit_tokens: int = 0


@dataclass(frozen=True)
class KVTierStats:
    """The KV host tier and the prefix cache's hits by tier, part of ``EngineStats``;
    counters are totals since the engine started, and all are 0 without a tier."""

    num_host_kv_blocks: int = 0
    num_free_host_kv_blocks: int = 0  # holding no key
    num_offloaded_blocks: int = 0
    num_restored_blocks: int = 0
    num_host_dropped_blocks: int = 0
    kv_bytes_offloaded: int = 0
    kv_bytes_restored: int = 0
    num_prefix_query_tokens: int = 0
    num_device_hit_tokens: int = 0
    num_host_hit_tokens: int = 0


def tier_stats(manager: BlockManager, host_block_bytes: int) -> KVTierStats:
    """``host_block_bytes``: what one block moves over every rank (``host_tier_size``)."""
    pool = manager.pool
    host = pool.host
    num_host_blocks = host.num_blocks if host is not None else 0
    counters, hits = pool.counters, manager.hits
    return KVTierStats(
        num_host_kv_blocks=num_host_blocks,
        num_free_host_kv_blocks=num_host_blocks - (len(host) if host is not None else 0),
        num_offloaded_blocks=counters.num_offloaded,
        num_restored_blocks=counters.num_restored,
        num_host_dropped_blocks=counters.num_host_dropped,
        kv_bytes_offloaded=counters.num_offloaded * host_block_bytes,
        kv_bytes_restored=counters.num_restored * host_block_bytes,
        num_prefix_query_tokens=hits.num_query_tokens,
        num_device_hit_tokens=hits.num_device_hit_tokens,
        num_host_hit_tokens=hits.num_host_hit_tokens,
    )
