"""Reaching the PrefixIndex from Serve processes: engines publish, the router asks.

With a Redis URL every process opens its own client. Without one (the embedded default)
the index lives in one named Ray actor that every replica and router shares, so "in-process"
means one process of the Ray cluster, and routing still sees every replica's blocks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

import ray

from serve.engine.kv_events import AllBlocksCleared, BlockStored, KVEvent
from serve.metrics import router_metrics
from serve.prefix_index import (
    BackgroundPublisher,
    InProcessPrefixIndex,
    TierMatch,
    open_prefix_index,
)

logger = logging.getLogger(__name__)

INDEX_ACTOR_NAME = "mistral-serve-prefix-index"
INDEX_ACTOR_NAMESPACE = "mistral-serve"
# The router gives the index this long per request before routing on load alone.
LOOKUP_TIMEOUT_S = 0.5


@ray.remote(num_cpus=0, max_concurrency=8)
class PrefixIndexActor:
    """An :class:`InProcessPrefixIndex` shared by the cluster's replicas and routers."""

    def __init__(self) -> None:
        self.index = InProcessPrefixIndex()

    def publish(self, replica_id: str, events: list[KVEvent]) -> None:
        self.index.publisher(replica_id).publish(events)

    def match_prefix(self, block_hashes: list[bytes]) -> dict[str, int]:
        return self.index.match_prefix(block_hashes)

    def match_prefix_tiers(self, block_hashes: list[bytes]) -> dict[str, TierMatch]:
        return self.index.match_prefix_tiers(block_hashes)

    def get_session(self, session_id: str) -> str | None:
        return self.index.get_session(session_id)

    def set_session(self, session_id: str, replica_id: str, ttl_s: float | None) -> None:
        self.index.set_session(session_id, replica_id, ttl_s)

    def remove_replica(self, replica_id: str) -> None:
        self.index.remove_replica(replica_id)


def index_actor() -> Any:
    return PrefixIndexActor.options(  # type: ignore[attr-defined]
        name=INDEX_ACTOR_NAME, namespace=INDEX_ACTOR_NAMESPACE, get_if_exists=True,
        lifetime="detached").remote()


class _ActorPublisher:
    """Fire-and-forget batches to the index actor (ordered: one caller, one actor)."""

    def __init__(self, actor: Any, replica_id: str) -> None:
        self.actor = actor
        self.replica_id = replica_id

    def publish(self, events: Sequence[KVEvent]) -> None:
        self.actor.publish.remote(self.replica_id, list(events))

    def resync(self, stored: Sequence[BlockStored]) -> None:
        self.publish([AllBlocksCleared(), *stored])


def make_publisher(redis_url: str | None, replica_id: str) -> Any:
    """The engine's event sink (with ``resync``); Redis writes happen on a background
    thread, off the engine's step."""
    if redis_url:
        return BackgroundPublisher(open_prefix_index(redis_url).publisher(replica_id))
    return _ActorPublisher(index_actor(), replica_id)


class RouterIndex:
    """Async, bounded lookups for the router; failures read as "no information"."""

    def __init__(self, redis_url: str | None, session_ttl_s: float) -> None:
        self.session_ttl_s = session_ttl_s
        self._redis = open_prefix_index(redis_url) if redis_url else None
        self._actor = None if redis_url else index_actor()
        self.backend = "redis" if redis_url else "ray_actor"
        # Lookups that failed or were skipped (index down): the router's "fallback".
        self.num_failures = 0
        self._metrics = router_metrics()

    async def _call(self, name: str, *args: Any) -> Any:
        try:
            if self._redis is not None:
                call = asyncio.to_thread(getattr(self._redis, name), *args)
            else:
                call = getattr(self._actor, name).remote(*args)
            result = await asyncio.wait_for(call, LOOKUP_TIMEOUT_S)
        except Exception as exc:  # routing degrades to load; the request still runs
            logger.debug("prefix index %s failed: %s", name, exc)
            self._failed(name)
            return None
        # The Redis index answers its fallback itself while Redis fails (and backs off).
        health = getattr(self._redis, "health", None)
        if health is not None and health.is_down:
            self._failed(name)
        return result

    def _failed(self, operation: str) -> None:
        self.num_failures += 1
        self._metrics.record_index_error(self.backend, operation)

    async def match_prefix(self, block_hashes: list[bytes]) -> dict[str, int]:
        if not block_hashes:
            return {}
        return await self._call("match_prefix", block_hashes) or {}

    async def match_prefix_tiers(self, block_hashes: list[bytes]) -> dict[str, TierMatch]:
        if not block_hashes:
            return {}
        return await self._call("match_prefix_tiers", block_hashes) or {}

    async def get_session(self, session_id: str) -> str | None:
        return await self._call("get_session", session_id)

    def set_session(self, session_id: str, replica_id: str) -> None:
        """Not awaited: recording affinity must never delay the request it came with."""
        if self._redis is not None:
            _in_background(self._redis.set_session, session_id, replica_id, self.session_ttl_s)
        else:
            self._actor.set_session.remote(session_id, replica_id, self.session_ttl_s)

    def remove_replica(self, replica_id: str) -> None:
        if self._redis is not None:
            _in_background(self._redis.remove_replica, replica_id)
        else:
            self._actor.remove_replica.remote(replica_id)


def _in_background(fn: Any, *args: Any) -> None:
    """A blocking Redis write off the caller's thread (router callbacks may run outside a
    running event loop); the index bounds its own time and logs its own errors."""
    threading.Thread(target=fn, args=args, daemon=True).start()
