"""Which replica holds which KV blocks, and which replica serves which session.

Light on purpose (the router imports it): the Redis client is imported only when a
``RedisPrefixIndex`` is asked for, so the embedded default needs no redis package.

    index = open_prefix_index(None)                       # in-process (the default)
    index = open_prefix_index("redis://redis:6379/0")     # shared by the cluster
    index.publisher("replica-1").publish(events)          # engine side
    BackgroundPublisher(index.publisher("replica-1"))     # same, off the engine's step
    index.match_prefix(hash_prompt_blocks(tokens, 16))    # router side: {"replica-1": 12}
    index.match_prefix_tiers(hashes)   # {"replica-1": TierMatch(12, num_host_blocks=4)}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serve.prefix_index.background import BackgroundPublisher
from serve.prefix_index.base import (
    IndexPublisher,
    PrefixIndex,
    TierMatch,
    leading_block_counts,
    leading_tier_counts,
)
from serve.prefix_index.in_process import InProcessPrefixIndex

if TYPE_CHECKING:
    from serve.prefix_index.redis_index import RedisPrefixIndex

__all__ = [
    "BackgroundPublisher",
    "IndexPublisher",
    "InProcessPrefixIndex",
    "PrefixIndex",
    "RedisPrefixIndex",
    "TierMatch",
    "leading_block_counts",
    "leading_tier_counts",
    "open_prefix_index",
]


def open_prefix_index(redis_url: str | None = None, **options: Any) -> PrefixIndex:
    """``RedisPrefixIndex(redis_url, **options)`` when a URL is given, else in-process."""
    if redis_url:
        from serve.prefix_index.redis_index import RedisPrefixIndex

        return RedisPrefixIndex(redis_url, **options)
    return InProcessPrefixIndex(**options)


def __getattr__(name: str) -> Any:
    if name == "RedisPrefixIndex":
        from serve.prefix_index.redis_index import RedisPrefixIndex

        return RedisPrefixIndex
    raise AttributeError(f"module 'serve.prefix_index' has no attribute {name!r}")
