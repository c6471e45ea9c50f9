"""The router's ranking as pure functions: session owner, then longest cached prefix, then load.

No Ray and no Serve here: ``serve/routing/router.py`` gathers the inputs (index lookups, queue
lengths) and maps the chosen ids back to replicas, so each rule is unit-tested alone.

The rules, for one request over the candidate replicas:

1. ``session``: the replica that served the request's session, if it is a candidate and
   under its load cap.
2. ``prefix``: among candidates under their cap holding at least ``min_prefix_blocks``
   cached blocks of the prompt, the cheapest to serve it (``PrefixCostModel``: a block on
   the device costs nothing, on the host tier its copy, missing its prefill; with no host
   blocks that is the longest match); equal costs go to the lower load, and equal loads to
   the greatest replica id (arbitrary, but every router picks the same).
3. ``load`` (or ``fallback`` when the index failed during the request, so affinity was never
   weighed): two random candidates; Serve probes both and takes the shorter queue.

An affinity choice is the only candidate offered: offering fallbacks lets Serve move the
request whenever one queue-length probe is slow, which scatters conversations.

Worked example (``load_cap=0.8``, every ``max_ongoing_requests=10``, so the cap is load < 8)::

    loads   {"a": 9, "b": 3, "c": 3}      matches {"a": 12, "b": 5, "c": 5}
    owner "a" is at 9 >= 8: over its cap, rule 1 does not apply
    rule 2: "a" is over its cap; "b" and "c" tie on 5 blocks and load 3 -> "c" (greater id)
    -> RoutingDecision(replica_ids=("c",), reason="prefix")

With tiers (default costs: a copy is 0.087 of a prefill), 10 blocks on "a"'s device against
12 blocks on "b", 8 of them on its host: "a" saves 10 prefills, "b" 12 - 8 * 0.087 = 11.3,
so "b" wins; with all 12 of "b" on the host it saves 10.96 and still wins, by a hair.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from serve.prefix_index.base import TierMatch

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
class PrefixCostModel:
    """Seconds per token of a prompt's KV on a replica: nothing where its device holds it,
    ``copy_s_per_token`` where its host tier does, ``prefill_s_per_token`` where it is
    missing. Only the ratio ranks replicas: a replica's cost is
    ``host * copy + (prompt - held) * prefill``, so the cheapest is the one saving most.

    Defaults: Mistral-7B, bf16, one H100, tp=1. Prefill: about 1 s for a 32K-token prompt
    (30 us per token on average; attention makes later tokens dearer). Copy: 128 KiB of KV
    per token over PCIe Gen5 at about 50 GB/s, 2.6 us per token. At tp=2 each rank
    prefills half the heads and copies half the KV over its own link, so both halve and the
    ratio (0.087) stays. Measured on the 2-core CPU of the benchmarks (bench/kv_host_tier.py,
    SmolLM2-135M in fp32): a restore costs about 10 us per token (4.6 GB/s) against 4-8 ms
    of prefill, a ratio near 0.002, so there a host block is nearly as good as a device one.
    """

    prefill_s_per_token: float = 30e-6
    copy_s_per_token: float = 2.6e-6

    def blocks_saved(self, match: TierMatch) -> float:
        """Prefill avoided, in blocks: a device block saves one, a host block one less
        its copy."""
        copy_ratio = self.copy_s_per_token / self.prefill_s_per_token
        return match.num_blocks - match.num_host_blocks * copy_ratio


@dataclass(frozen=True)
class RoutingPolicy:
    """``load_cap``: fraction of ``max_ongoing_requests`` at which affinity yields to load,
    so one hot conversation or system prompt cannot pile every request onto one replica;
    ``min_prefix_blocks``: the shortest cached prefix worth routing for; ``cost``: how
    cached blocks in each tier are weighed."""

    load_cap: float = 0.8
    min_prefix_blocks: int = 1
    cost: PrefixCostModel = PrefixCostModel()


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


def choose_by_prefix_or_load(prefix_matches: Mapping[str, int | TierMatch],
                             replicas: Sequence[ReplicaLoad], policy: RoutingPolicy, *,
                             index_failed: bool = False, rng: random.Random | None = None
                             ) -> RoutingDecision:
    """Rules 2 and 3. ``prefix_matches``: replica id -> leading cached blocks of the prompt,
    a ``TierMatch`` or a plain count (all on the device); ids that are not candidates are
    ignored (the index may know replicas Serve removed). ``rng`` defaults to the ``random``
    module's shared generator, as Serve's own router."""
    if not replicas:
        return RoutingDecision((), "no_replicas")
    by_id = _by_id(replicas)
    matches = {replica_id: match if isinstance(match, TierMatch) else TierMatch(match)
               for replica_id, match in prefix_matches.items()}
    saved = policy.cost.blocks_saved
    # Tuples compare element by element: most prefill saved, then lowest load, then
    # greatest id.
    scored = [(saved(match), -by_id[replica_id].load, replica_id)
              for replica_id, match in matches.items()
              if replica_id in by_id and match.num_blocks >= policy.min_prefix_blocks
              and by_id[replica_id].under_cap(policy.load_cap)]
    if scored:
        return RoutingDecision((max(scored)[2],), "prefix")
    sample = random.sample if rng is None else rng.sample
    pair = sample(list(replicas), min(NUM_LOAD_CANDIDATES, len(replicas)))
    return RoutingDecision(tuple(r.replica_id for r in pair),
                           "fallback" if index_failed else "load")


def choose_replicas(owner_id: str | None, prefix_matches: Mapping[str, int | TierMatch],
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
