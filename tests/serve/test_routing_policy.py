"""The router's ranking (serve/routing/policy.py) alone: no Ray, no Serve, exact choices."""

from __future__ import annotations

import random

import pytest

from serve.routing.policy import (
    ReplicaLoad,
    RoutingDecision,
    RoutingPolicy,
    choose_by_prefix_or_load,
    choose_replicas,
    choose_session_owner,
)

# Capacity 10 at the default cap of 0.8: a replica is under its cap below a load of 8.
POLICY = RoutingPolicy(load_cap=0.8, min_prefix_blocks=1)


def replicas(**loads: float) -> list[ReplicaLoad]:
    """``replicas(a=1, b=9)``: candidates in keyword order, each with capacity 10."""
    return [ReplicaLoad(replica_id, load, 10) for replica_id, load in loads.items()]


def test_session_owner_wins_over_a_longer_prefix_elsewhere() -> None:
    decision = choose_replicas("a", {"a": 1, "b": 30}, replicas(a=5, b=0), POLICY)
    assert decision == RoutingDecision(("a",), "session")


def test_session_owner_over_its_cap_yields_to_prefix() -> None:
    # 8 is exactly the cap (0.8 * 10): a replica at its cap counts as full.
    decision = choose_replicas("a", {"a": 4, "b": 2}, replicas(a=8, b=0), POLICY)
    assert decision == RoutingDecision(("b",), "prefix")
    assert choose_session_owner("a", replicas(a=8, b=0), POLICY) is None
    assert choose_session_owner("a", replicas(a=7.5, b=0), POLICY) == RoutingDecision(
        ("a",), "session")


def test_session_owner_cap_uses_its_own_max_ongoing_requests() -> None:
    small = [ReplicaLoad("a", 4, 5), ReplicaLoad("b", 4, 10)]  # caps: 4 and 8
    assert choose_session_owner("a", small, POLICY) is None
    assert choose_session_owner("b", small, POLICY) == RoutingDecision(("b",), "session")


@pytest.mark.parametrize("owner_id", [None, "", "gone"])
def test_unknown_or_absent_owner_falls_through_to_prefix(owner_id: str | None) -> None:
    candidates = replicas(a=0, b=0)
    assert choose_session_owner(owner_id, candidates, POLICY) is None
    decision = choose_replicas(owner_id, {"b": 2, "gone": 9}, candidates, POLICY)
    assert decision == RoutingDecision(("b",), "prefix")


def test_longest_prefix_wins_whatever_the_load() -> None:
    decision = choose_replicas(None, {"a": 2, "b": 5, "c": 4}, replicas(a=0, b=7, c=0), POLICY)
    assert decision == RoutingDecision(("b",), "prefix")


def test_equal_prefixes_go_to_the_lower_load() -> None:
    decision = choose_replicas(None, {"a": 3, "b": 3, "c": 1}, replicas(a=4, b=2, c=0), POLICY)
    assert decision == RoutingDecision(("b",), "prefix")
    # Fractional loads (routing stats) compare as they are.
    decision = choose_replicas(None, {"a": 3, "b": 3}, replicas(a=2.5, b=3.0), POLICY)
    assert decision == RoutingDecision(("a",), "prefix")


def test_equal_prefix_and_load_go_to_the_greatest_replica_id() -> None:
    # Independent of candidate and match order, so every ingress router picks the same one.
    for order in (["a", "c", "b"], ["c", "b", "a"]):
        candidates = [ReplicaLoad(replica_id, 1, 10) for replica_id in order]
        matches = {replica_id: 2 for replica_id in reversed(order)}
        assert choose_replicas(None, matches, candidates, POLICY) == RoutingDecision(
            ("c",), "prefix")


def test_prefix_skips_replicas_over_their_cap() -> None:
    decision = choose_replicas(None, {"a": 9, "b": 1}, replicas(a=8, b=7), POLICY)
    assert decision == RoutingDecision(("b",), "prefix")


def test_every_prefix_holder_over_its_cap_routes_on_load() -> None:
    decision = choose_replicas(None, {"a": 9}, replicas(a=8, b=0), POLICY,
                               rng=random.Random(0))
    assert decision.reason == "load"
    # The capped replica may still be drawn for the pair: Serve's queue probe decides then.
    assert sorted(decision.replica_ids) == ["a", "b"]


def test_prefix_shorter_than_min_prefix_blocks_is_ignored() -> None:
    policy = RoutingPolicy(load_cap=0.8, min_prefix_blocks=3)
    decision = choose_replicas(None, {"a": 2, "b": 3}, replicas(a=0, b=5), policy)
    assert decision == RoutingDecision(("b",), "prefix")
    decision = choose_replicas(None, {"a": 2}, replicas(a=0), policy)
    assert decision == RoutingDecision(("a",), "load")
    # The filter is ``>=``: at min_prefix_blocks=0 even a zero-block match is an affinity.
    zero = RoutingPolicy(load_cap=0.8, min_prefix_blocks=0)
    assert choose_replicas(None, {"a": 0}, replicas(a=0, b=0), zero).reason == "prefix"


def test_matches_on_replicas_that_are_not_candidates_are_ignored() -> None:
    decision = choose_replicas(None, {"gone": 50}, replicas(a=0), POLICY)
    assert decision == RoutingDecision(("a",), "load")


def test_load_offers_a_random_pair_of_distinct_candidates() -> None:
    candidates = replicas(a=0, b=0, c=0, d=0)
    seen = set()
    for seed in range(50):
        decision = choose_replicas(None, {}, candidates, POLICY, rng=random.Random(seed))
        assert decision.reason == "load"
        assert len(decision.replica_ids) == 2 == len(set(decision.replica_ids))
        seen.update(decision.replica_ids)
    assert seen == {"a", "b", "c", "d"}
    # The same generator state gives the same pair: the choice is the rng's, nothing else's.
    assert choose_replicas(None, {}, candidates, POLICY, rng=random.Random(7)) == \
        choose_replicas(None, {}, candidates, POLICY, rng=random.Random(7))


def test_load_with_one_candidate_offers_it_alone() -> None:
    assert choose_replicas(None, {}, replicas(a=3), POLICY) == RoutingDecision(("a",), "load")


def test_index_failure_reports_fallback_not_load() -> None:
    decision = choose_replicas(None, {}, replicas(a=0), POLICY, index_failed=True)
    assert decision == RoutingDecision(("a",), "fallback")
    # A failure does not undo an affinity decision made on what the index did answer.
    assert choose_replicas("a", {}, replicas(a=0), POLICY, index_failed=True).reason == \
        "session"
    assert choose_replicas(None, {"a": 2}, replicas(a=0), POLICY,
                           index_failed=True).reason == "prefix"


def test_no_candidates() -> None:
    empty = RoutingDecision((), "no_replicas")
    assert choose_replicas("a", {"a": 3}, [], POLICY) == empty
    assert choose_by_prefix_or_load({"a": 3}, [], POLICY) == empty
    assert choose_session_owner("a", [], POLICY) is None


def test_no_inputs_routes_on_load() -> None:
    decision = choose_replicas(None, {}, replicas(a=0, b=0), POLICY, rng=random.Random(1))
    assert decision.reason == "load"
    assert sorted(decision.replica_ids) == ["a", "b"]

