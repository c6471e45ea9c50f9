"""The engine's stats (``EngineStats``): what metrics, routing and autoscaling read, and the
counters of the KV tiers and the prefix cache's hits by tier behind some of its fields.

The block pool and manager bump the counters as blocks move; ``engine_stats`` reads them
once per stats poll, never per step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from serve.engine.speculator import SpecCounters, Speculator

if TYPE_CHECKING:
    from serve.engine.block_manager import BlockManager
    from serve.engine.scheduler import Scheduler


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


@dataclass(frozen=True, kw_only=True)
class EngineStats(KVTierStats):
    """The engine's state now; the KV host tier's fields and the prefix cache's hits by
    tier come from ``KVTierStats``."""

    num_running: int
    num_waiting: int
    num_kv_blocks: int
    num_free_kv_blocks: int
    kv_cache_usage: float
    num_cached_blocks: int
    num_kv_tokens: int
    # Requests aborted since the engine started (caller left, cancelled): a cancellation
    # that never reached the engine shows as a request that ran to its end instead.
    num_aborted: int = 0
    # Speculative decoding since the engine started: verification rows (a request's step
    # with drafts), draft tokens proposed, and accepted.
    num_spec_drafts: int = 0
    num_spec_draft_tokens: int = 0
    num_spec_accepted_tokens: int = 0


def engine_stats(scheduler: Scheduler, speculator: Speculator | None, num_kv_tokens: int,
                 num_aborted: int, host_block_bytes: int) -> EngineStats:
    """``num_kv_tokens``: what the KV cache holds; ``host_block_bytes`` as ``tier_stats``."""
    manager = scheduler.block_manager
    spec = speculator.counters if speculator is not None else SpecCounters()
    return EngineStats(
        num_running=len(scheduler.running),
        num_waiting=len(scheduler.waiting),
        num_kv_blocks=manager.num_blocks,
        num_free_kv_blocks=manager.num_free_blocks,
        kv_cache_usage=manager.usage,
        num_cached_blocks=manager.num_cached_blocks,
        num_kv_tokens=num_kv_tokens,
        num_aborted=num_aborted,
        num_spec_drafts=spec.num_drafts,
        num_spec_draft_tokens=spec.num_draft_tokens,
        num_spec_accepted_tokens=spec.num_accepted_tokens,
        **asdict(tier_stats(manager, host_block_bytes)),
    )
