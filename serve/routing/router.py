"""Session- and prefix-aware request routing for the LLMServer deployment.

Ranking for each request: (1) the replica its session was served by, (2) the replica
where its prompt's cached prefix saves the most prefill (device blocks, then host blocks at
the price of their copy), (3) the less loaded of two random replicas; a replica at its
load cap is skipped by (1) and (2). The decision itself is the pure
``serve.routing.policy`` (tested without Serve); this module gathers its inputs from the
prefix index and Serve's queue lengths, and records the outcome. With one candidate there
is nothing to rank, and the index is not asked.

An Ingress's output channel (``ChannelOpen``, serve/ingress/channels.py) goes to the
replica it names, and only there.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, TypeVar

from ray.serve.request_router import (
    FIFOMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from serve.metrics import router_metrics
from serve.prefix_index.access import RouterIndex
from serve.prefix_index.base import TierMatch
from serve.protocol import ChannelOpen, ServeRequest
from serve.routing.policy import (
    ReplicaLoad,
    RoutingDecision,
    RoutingPolicy,
    choose_by_prefix_or_load,
    choose_session_owner,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


def replica_key(replica: RunningReplica | ReplicaID) -> str:
    replica_id = replica.replica_id if isinstance(replica, RunningReplica) else replica
    return replica_id.unique_id


class PrefixSessionRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, redis_url: str | None = None, session_ttl_s: float = 1800.0,
                         load_cap: float = 0.8, min_prefix_blocks: int = 1) -> None:
        """``load_cap``: fraction of ``max_ongoing_requests`` above which affinity yields to
        load; ``min_prefix_blocks``: shortest cached prefix worth routing for."""
        self.index = RouterIndex(redis_url, session_ttl_s)
        self.policy = RoutingPolicy(load_cap=load_cap, min_prefix_blocks=min_prefix_blocks)
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

    def _loads(self, replicas: list[RunningReplica]) -> list[ReplicaLoad]:
        return [ReplicaLoad(replica_key(r), self._load(r), r.max_ongoing_requests)
                for r in replicas]

    # Serve drops a replica from a rank when its queue-length probe misses this deadline
    # and falls through to the next rank; on a busy node the default 0.1 s is missed often
    # enough to scatter a conversation, so affinity probes get longer.
    queue_len_response_deadline_s = 1.0

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        opening = _argument(pending_request, ChannelOpen)
        if opening is not None:
            # An output channel goes to the replica it is for, or nowhere (Serve retries
            # until the Ingress gives up on it); it is no routing decision.
            pinned = [r for r in candidate_replicas if replica_key(r) == opening.replica_id]
            return [pinned] if pinned else []
        request = _serve_request(pending_request)
        if request is None:  # a probe or a stats call: any replica, no routing decision
            return [candidate_replicas]
        if len(candidate_replicas) == 1:
            # Nothing to rank: the index lookups, a round trip each, cannot change the
            # answer (a session still records its owner, in on_request_routed).
            self._decided("load")
            return [candidate_replicas]
        index_failures = self.index.num_failures
        decision: RoutingDecision | None = None
        matches: dict[str, TierMatch] = {}
        if request.session_id:
            owner_id = await self.index.get_session(request.session_id)
            # Loads are read after each lookup: the queue-length cache moves meanwhile.
            decision = choose_session_owner(owner_id, self._loads(candidate_replicas),
                                            self.policy)
        # Asked only when the session did not decide: each lookup is a round trip.
        if decision is None:
            matches = await self.index.match_prefix_tiers(request.block_hashes)
        if decision is None:
            # "fallback": the index failed during this request, so affinity was not weighed.
            decision = choose_by_prefix_or_load(
                matches, self._loads(candidate_replicas), self.policy,
                index_failed=self.index.num_failures > index_failures)
        self._decided(decision.reason)
        by_key = {replica_key(r): r for r in candidate_replicas}
        return [[by_key[replica_id] for replica_id in decision.replica_ids]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: Any) -> None:
        request = _serve_request(pending_request)
        if request is not None and request.session_id:
            self.index.set_session(request.session_id, replica_key(replica_id))

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.index.remove_replica(replica_key(replica_id))


def _argument(pending_request: PendingRequest | None, kind: type[T]) -> T | None:
    if pending_request is None:
        return None
    for arg in pending_request.args:
        if isinstance(arg, kind):
            return arg
    return None


def _serve_request(pending_request: PendingRequest | None) -> ServeRequest | None:
    return _argument(pending_request, ServeRequest)
