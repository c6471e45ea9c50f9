"""PrefixIndex: the same behaviour in-process and in a real Redis, and the in-process
index's own rules. Redis's round trips and outages are in test_prefix_index_redis.py, the
background publisher in test_index_publisher.py."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

from serve.engine.block_hash import hash_prompt_blocks
from serve.engine.block_manager import BlockManager
from serve.engine.kv_events import AllBlocksCleared, BlockRemoved
from serve.prefix_index import (
    InProcessPrefixIndex,
    PrefixIndex,
    leading_block_counts,
)
from tests.serve.index_cases import conversation, stored

# ---- behaviour shared by both implementations ----------------------------------------------


def test_longest_prefix_per_replica_over_a_conversation(index: PrefixIndex) -> None:
    # Turn 1 (4 blocks) was served by A; turn 2 extends it to 10 blocks and ran on B.
    turn2 = conversation(10)
    turn1 = turn2[:4]
    assert turn1 == conversation(10)[:4]  # chained keys: same tokens, same leading keys
    index.publisher("A").publish([stored(turn1)])
    index.publisher("B").publish([stored(turn2[:6]), stored(turn2[6:], parent=turn2[5])])

    assert index.match_prefix(turn2) == {"A": 4, "B": 10}
    assert index.match_prefix(turn1) == {"A": 4, "B": 4}
    assert index.match_prefix(turn2[:1]) == {"A": 1, "B": 1}
    turn3 = turn2 + conversation(3, seed=1)  # keys of new blocks nobody holds yet
    assert index.match_prefix(turn3) == {"A": 4, "B": 10}


def test_a_gap_stops_the_count(index: PrefixIndex) -> None:
    prompt = conversation(10)
    index.publisher("A").publish([stored(prompt), BlockRemoved([prompt[4]])])
    index.publisher("B").publish([stored(prompt[5:], parent=prompt[4])])  # no leading block
    index.publisher("C").publish([stored(prompt[:2]), stored(prompt[3:8], parent=prompt[2])])

    assert index.match_prefix(prompt) == {"A": 4, "C": 2}


def test_unknown_and_empty_prompts_match_nothing(index: PrefixIndex) -> None:
    index.publisher("A").publish([stored(conversation(4))])
    assert index.match_prefix(conversation(4, seed=7)) == {}
    assert index.match_prefix([]) == {}


def test_removed_blocks_shorten_the_prefix(index: PrefixIndex) -> None:
    prompt = conversation(8)
    publisher = index.publisher("A")
    publisher.publish([stored(prompt)])
    index.publisher("B").publish([stored(prompt[:3])])
    publisher.publish([BlockRemoved(prompt[6:])])  # the engine evicted the tail
    assert index.match_prefix(prompt) == {"A": 6, "B": 3}
    publisher.publish([BlockRemoved(prompt[:6])])
    assert index.match_prefix(prompt) == {"B": 3}
    publisher.publish([BlockRemoved(prompt[:1])])  # removing an absent block is a no-op
    assert index.match_prefix(prompt) == {"B": 3}


def test_events_apply_in_batch_order(index: PrefixIndex) -> None:
    prompt = conversation(4)
    publisher = index.publisher("A")
    publisher.publish([stored(prompt), BlockRemoved(prompt[2:]), stored(prompt[3:])])
    assert index.match_prefix(prompt) == {"A": 2}
    assert index.match_prefix(prompt[3:]) == {"A": 1}


def test_all_blocks_cleared_forgets_only_that_replica(index: PrefixIndex) -> None:
    first, second = conversation(5), conversation(3, seed=1)
    index.publisher("A").publish([stored(first), stored(second)])
    index.publisher("B").publish([stored(first[:2])])

    index.publisher("A").publish([AllBlocksCleared()])
    assert index.match_prefix(first) == {"B": 2}
    assert index.match_prefix(second) == {}

    # Within one batch the clear wipes what came before it, not what follows.
    index.publisher("A").publish([stored(first), AllBlocksCleared(), stored(second[:2])])
    assert index.match_prefix(first) == {"B": 2}
    assert index.match_prefix(second) == {"A": 2}


def test_resync_replaces_a_replicas_blocks(index: PrefixIndex) -> None:
    old, new = conversation(6), conversation(6, seed=1)
    publisher = index.publisher("A")
    publisher.publish([stored(old)])
    publisher.resync([stored(new[:3]), stored(new[3:5], parent=new[2])])
    assert index.match_prefix(old) == {}
    assert index.match_prefix(new) == {"A": 5}


def test_sessions_set_get_overwrite_and_expire(index: PrefixIndex) -> None:
    assert index.get_session("s1") is None
    index.set_session("s1", "A", ttl_s=60)
    index.set_session("s2", "B", ttl_s=0.2)
    assert index.get_session("s1") == "A"
    assert index.get_session("s2") == "B"
    index.set_session("s1", "C", ttl_s=60)  # the session moved
    assert index.get_session("s1") == "C"
    time.sleep(0.3)
    assert index.get_session("s2") is None
    assert index.get_session("s1") == "C"


def test_remove_replica_forgets_blocks_and_sessions(index: PrefixIndex) -> None:
    prompt = conversation(6)
    index.publisher("A").publish([stored(prompt)])
    index.publisher("B").publish([stored(prompt[:2])])
    index.set_session("pinned-to-A", "A", ttl_s=60)
    index.set_session("moved-to-B", "A", ttl_s=60)
    index.set_session("moved-to-B", "B", ttl_s=60)

    index.remove_replica("A")
    assert index.match_prefix(prompt) == {"B": 2}
    assert index.get_session("pinned-to-A") is None
    assert index.get_session("moved-to-B") == "B"
    index.remove_replica("never-seen")  # a no-op, not an error
    index.publisher("C").publish([stored(conversation(2, seed=9))])  # may reuse A's slot
    assert index.match_prefix(prompt) == {"B": 2}

    # A replica id that comes back (restarted) is indexed afresh.
    index.publisher("A").publish([stored(prompt[:3])])
    assert index.match_prefix(prompt) == {"A": 3, "B": 2}


def test_random_histories_match_the_reference_rule(index: PrefixIndex) -> None:
    rng = random.Random(1234)
    prompt = conversation(40)
    holders: list[set[str]] = [set() for _ in prompt]
    replicas = [f"r{i}" for i in range(5)]
    for _ in range(60):
        replica = rng.choice(replicas)
        start = rng.randrange(len(prompt))
        span = prompt[start : start + rng.randrange(1, 12)]
        if rng.random() < 0.65:
            index.publisher(replica).publish([stored(span)])
            for position in range(start, start + len(span)):
                holders[position].add(replica)
        else:
            index.publisher(replica).publish([BlockRemoved(span)])
            for position in range(start, start + len(span)):
                holders[position].discard(replica)
        assert index.match_prefix(prompt) == leading_block_counts(holders)


def test_index_follows_real_block_managers(index: PrefixIndex) -> None:
    """Engine and router agree: events of two real prefix caches (with evictions) keep the
    index equal to what each cache holds, keyed by the router's ``hash_prompt_blocks``."""
    block_size = 4
    managers = {name: BlockManager(num_blocks=16, block_size=block_size) for name in "AB"}
    rng = random.Random(7)
    chats: list[list[int]] = [[] for _ in range(5)]
    for turn in range(80):
        chat = chats[rng.randrange(len(chats))]
        if len(chat) > 40:
            chat.clear()  # a new conversation; the old blocks linger until evicted
        chat += [rng.randrange(1000) for _ in range(rng.randrange(3, 12))]
        replica = rng.choice("AB")
        manager = managers[replica]
        hit_ids, num_computed = manager.get_computed_blocks(f"t{turn}", chat)
        table = manager.allocate_slots(
            f"t{turn}", chat, num_computed, len(chat) - num_computed, hit_ids
        )
        assert table is not None
        manager.free(f"t{turn}")
        index.publisher(replica).publish(manager.drain_events())

        cached = {
            name: {block.block_hash for block in m.pool.blocks} for name, m in managers.items()
        }
        for other in chats:
            hashes = hash_prompt_blocks(other, block_size)
            holders = [{name for name in managers if key in cached[name]} for key in hashes]
            assert index.match_prefix(hashes) == leading_block_counts(holders)


def test_reference_rule_worked_example() -> None:
    holders = [{"A", "B"}, {"A", "B"}, {"B"}, {"A", "B"}]
    assert leading_block_counts(holders) == {"A": 2, "B": 4}
    assert leading_block_counts([set(), {"A"}]) == {}
    assert leading_block_counts([]) == {}


# ---- in-process specifics -------------------------------------------------------------------


def test_in_process_lru_cap_keeps_recently_used_blocks() -> None:
    index = InProcessPrefixIndex(max_blocks=8)
    hot, cold = conversation(4), conversation(4, seed=1)
    index.publisher("A").publish([stored(hot), stored(cold)])
    assert index.match_prefix(hot) == {"A": 4}  # touches hot: cold is now the oldest
    index.publisher("B").publish([stored(conversation(4, seed=2))])
    assert len(index) == 8
    assert index.match_prefix(hot) == {"A": 4}
    assert index.match_prefix(cold) == {}
    index.publisher("A").publish([AllBlocksCleared()])  # evicted keys left the reverse index
    assert len(index) == 4


def test_in_process_expired_sessions_are_swept() -> None:
    now = [0.0]
    index = InProcessPrefixIndex(clock=lambda: now[0])
    for i in range(5000):
        index.set_session(f"s{i}", "A", ttl_s=1.0)
        now[0] += 0.01  # about 100 sessions alive at any time
    assert len(index._sessions) < 2048
    assert index.get_session("s4999") == "A"
    assert index.get_session("s0") is None


def test_in_process_is_thread_safe() -> None:
    index = InProcessPrefixIndex(max_blocks=500)
    prompt = conversation(64)
    errors: list[Exception] = []

    def churn(replica: str) -> None:
        try:
            publisher = index.publisher(replica)
            for round_ in range(200):
                publisher.publish([stored(prompt[: 1 + round_ % 64])])
                counts = index.match_prefix(prompt)
                assert all(0 < count <= 64 for count in counts.values())
                publisher.publish([BlockRemoved(prompt[round_ % 64 :])])
                if round_ % 50 == 0:
                    index.remove_replica(replica)
        except Exception as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=churn, args=(f"r{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for replica in ("r0", "r1", "r2", "r3"):
        index.publisher(replica).publish([AllBlocksCleared()])
    assert len(index) == 0


def test_importing_the_package_stays_light() -> None:
    code = (
        "import sys, serve.prefix_index as p; p.InProcessPrefixIndex();"
        "heavy = {'redis', 'torch', 'ray', 'grpc'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
