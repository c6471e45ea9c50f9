"""The router's ranking as pure functions: session owner, then longest cached prefix, then load.

No Ray and no Serve here: ``serve/router.py`` gathers the inputs (index lookups, queue
lengths) and maps the chosen ids back to replicas, so each rule is unit-tested alone.

The rules, for one request over the candidate replicas:

1. ``session``: the replica that served the request's session, if it is a candidate and
   under its load cap.
2. ``prefix``: among candidates under their cap holding at least ``min_prefix_blocks``
   cached blocks of the prompt, the longest match; equal matches go to the lower load, and
   equal loads to the greatest replica id (arbitrary, but every router picks the same).
3. ``load`` (or ``fallback`` when the index failed during the request, so affinity was never
   weighed): two random candidates; Serve probes both and takes the shorter queue.

An affinity choice is the only candidate offered: offering fallbacks lets Serve move the
request whenever one queue-length probe is slow, which scatters conversations.

Worked example (``load_cap=0.8``, every ``max_ongoing_requests=10``, so the cap is load < 8)::

    loads   {"a": 9, "b": 3, "c": 3}      matches {"a": 12, "b": 5, "c": 5}
    owner "a" is at 9 >= 8: over its cap, rule 1 does not apply
    rule 2: "a" is over its cap; "b" and "c" tie on 5 blocks and load 3 -> "c" (greater id)
    -> RoutingDecision(replica_ids=("c",), reason="prefix")
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

# The reasons the router counts (``RouterMetrics.record_decision``); "no_replicas" is never
# counted, because the router returns before deciding when Serve offers no candidate.
Reason = Literal["session", "prefix", "load", "fallback", "no_replicas"]

# Serve probes both of a random pair and takes the shorter queue ("power of two choices").
NUM_LOAD_CANDIDATES = 2


@dataclass(frozen=True)
class ReplicaLoad:
    """One candidate replica as the router sees it when deciding."""

    replica_id: str
    load: float  # running + queued requests (Serve's queue-length cache, else engine stats)
    max_ongoing_requests: int

    def under_cap(self, load_cap: float) -> bool:
        """Strictly below ``load_cap`` of its capacity: a replica exactly at it is full."""
        return self.load < load_cap * self.max_ongoing_requests


@dataclass(frozen=True)
class RoutingPolicy:
    """``load_cap``: fraction of ``max_ongoing_requests`` at which affinity yields to load,
    so one hot conversation or system prompt cannot pile every request onto one replica;
    ``min_prefix_blocks``: the shortest cached prefix worth routing for."""

    load_cap: float = 0.8
    min_prefix_blocks: int = 1


@dataclass(frozen=True)
class RoutingDecision:
    """The replicas offered to Serve (one rank) and why, for the decision metric."""

    replica_ids: tuple[str, ...]
    reason: Reason


def choose_session_owner(owner_id: str | None, replicas: Sequence[ReplicaLoad],
                         policy: RoutingPolicy) -> RoutingDecision | None:
    """Rule 1 alone. None: the owner is unknown, not a candidate (replaced, draining) or
    over its cap; the router then asks the index for prefixes, which it skips otherwise."""
    if not owner_id:
        return None
    owner = _by_id(replicas).get(owner_id)
    if owner is None or not owner.under_cap(policy.load_cap):
        return None
    return RoutingDecision((owner.replica_id,), "session")


def choose_by_prefix_or_load(prefix_matches: Mapping[str, int],
                             replicas: Sequence[ReplicaLoad], policy: RoutingPolicy, *,
                             index_failed: bool = False, rng: random.Random | None = None
                             ) -> RoutingDecision:
    """Rules 2 and 3. ``prefix_matches``: replica id -> leading cached blocks of the prompt
    (ids that are not candidates are ignored: the index may know replicas Serve removed).
    ``rng`` defaults to the ``random`` module's shared generator, as Serve's own router."""
    if not replicas:
        return RoutingDecision((), "no_replicas")
    by_id = _by_id(replicas)
    # Tuples compare element by element: most blocks, then lowest load, then greatest id.
    scored = [(num_blocks, -by_id[replica_id].load, replica_id)
              for replica_id, num_blocks in prefix_matches.items()
              if replica_id in by_id and num_blocks >= policy.min_prefix_blocks
              and by_id[replica_id].under_cap(policy.load_cap)]
    if scored:
        return RoutingDecision((max(scored)[2],), "prefix")
    sample = random.sample if rng is None else rng.sample
    pair = sample(list(replicas), min(NUM_LOAD_CANDIDATES, len(replicas)))
    return RoutingDecision(tuple(r.replica_id for r in pair),
                           "fallback" if index_failed else "load")


def choose_replicas(owner_id: str | None, prefix_matches: Mapping[str, int],
                    replicas: Sequence[ReplicaLoad], policy: RoutingPolicy, *,
                    index_failed: bool = False, rng: random.Random | None = None
                    ) -> RoutingDecision:
    """The whole ranking over one snapshot of the inputs.

    The router applies the same two steps with an index lookup between them (it asks for
    prefixes only when the session rule did not decide), so the loads it passes to each
    step are read after the lookup before it.
    """
    if not replicas:
        return RoutingDecision((), "no_replicas")
    return (choose_session_owner(owner_id, replicas, policy)
            or choose_by_prefix_or_load(prefix_matches, replicas, policy,
                                        index_failed=index_failed, rng=rng))


def _by_id(replicas: Sequence[ReplicaLoad]) -> dict[str, ReplicaLoad]:
    return {replica.replica_id: replica for replica in replicas}
