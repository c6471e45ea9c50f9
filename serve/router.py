"""Session- and prefix-aware request routing for the LLMServer deployment.

Ranking for each request: (1) the replica its session was served by, (2) the replica
holding the longest cached prefix of its prompt, (3) the less loaded of two random
replicas. An affinity choice is the only candidate offered: offering fallbacks lets Serve
move the request whenever one queue-length probe is slow, which scatters conversations. A replica at its load cap is skipped by (1) and (2), so one hot conversation
or one popular system prompt cannot pile every request onto a single replica.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import Any

from ray.serve.request_router import (
    FIFOMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from serve.index_access import RouterIndex
from serve.metrics import router_metrics
from serve.protocol import ServeRequest

logger = logging.getLogger(__name__)


def replica_key(replica: RunningReplica | ReplicaID) -> str:
    replica_id = replica.replica_id if isinstance(replica, RunningReplica) else replica
    return replica_id.unique_id


class PrefixSessionRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, redis_url: str | None = None, session_ttl_s: float = 1800.0,
                         load_cap: float = 0.8, min_prefix_blocks: int = 1) -> None:
        """``load_cap``: fraction of ``max_ongoing_requests`` above which affinity yields to
        load; ``min_prefix_blocks``: shortest cached prefix worth routing for."""
        self.index = RouterIndex(redis_url, session_ttl_s)
        self.load_cap = load_cap
        self.min_prefix_blocks = min_prefix_blocks
        self.decisions: Counter[str] = Counter()
        self.metrics = router_metrics()

    def _decided(self, reason: str) -> None:
        """Count a routing decision here (tests) and as a metric (the dashboard)."""
        self.decisions[reason] += 1
        self.metrics.record_decision(reason)

    def _load(self, replica: RunningReplica) -> float:
        queue_len = self._replica_queue_len_cache.get(replica.replica_id)
        if queue_len is not None:
            return float(queue_len)
        stats = replica.routing_stats or {}
        return float(stats.get("num_running", 0) + stats.get("num_waiting", 0))

    def _under_cap(self, replica: RunningReplica) -> bool:
        return self._load(replica) < self.load_cap * replica.max_ongoing_requests

    # Serve drops a replica from a rank when its queue-length probe misses this deadline
    # and falls through to the next rank; on a busy node the default 0.1 s is missed often
    # enough to scatter a conversation, so affinity probes get longer.
    queue_len_response_deadline_s = 1.0

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        request = _serve_request(pending_request)
        index_failures = self.index.num_failures
        if request is not None:
            by_key = {replica_key(r): r for r in candidate_replicas}
            if request.session_id:
                owner = by_key.get(await self.index.get_session(request.session_id) or "")
                if owner is not None and self._under_cap(owner):
                    self._decided("session")
                    return [[owner]]
            matches = await self.index.match_prefix(request.block_hashes)
            scored = [(blocks, -self._load(by_key[key]), key)
                      for key, blocks in matches.items()
                      if key in by_key and blocks >= self.min_prefix_blocks
                      and self._under_cap(by_key[key])]
            if scored:
                self._decided("prefix")
                return [[by_key[max(scored)[2]]]]
        # "fallback": the index failed during this request, so affinity was not weighed.
        self._decided("fallback" if self.index.num_failures > index_failures else "load")
        # Both of a random pair: Serve probes them and takes the shorter queue.
        return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: Any) -> None:
        request = _serve_request(pending_request)
        if request is not None and request.session_id:
            self.index.set_session(request.session_id, replica_key(replica_id))

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.index.remove_replica(replica_key(replica_id))


def _serve_request(pending_request: PendingRequest | None) -> ServeRequest | None:
    if pending_request is None:
        return None
    for arg in pending_request.args:
        if isinstance(arg, ServeRequest):
            return arg
    return None
